"""Scenario overrides of the simulated host: the L3 ways and their rules
(cbm_len, min_cbm_bits, sparse_masks) beside RMIDs, CLOSIDs and counters."""

from __future__ import annotations

import pytest

from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import Scenario, ScenarioError, parse_scenario
from ceilometer_cmt.simulator.topology import get_topology

INTEL = get_topology("intel-2s")


def test_cat_overrides_shape_the_host() -> None:
    s = parse_scenario({"cbm_len": 11, "min_cbm_bits": 2, "sparse_masks": True,
                        "closids": 4}, INTEL)
    host = s.host(INTEL)
    assert (host.cbm_mask, host.min_cbm_bits, host.sparse_masks, host.num_closids) == (
        0x7FF, 2, True, 4)
    m = Model(INTEL, s)
    assert m.topology == host
    assert m.root.schemata == {0: 0x7FF, 1: 0x7FF}
    # nothing given: the preset as it is (ABMC counters only where the host has them)
    assert Scenario().host(INTEL) == INTEL
    assert parse_scenario({"mbm_cntrs": 4}, INTEL).host(INTEL) == INTEL
    assert parse_scenario({"mbm_cntrs": 4}, get_topology("amd-abmc")).host(
        get_topology("amd-abmc")).num_mbm_cntrs == 4
    # min_cbm_bits alone is checked against the preset's ways
    assert parse_scenario({"min_cbm_bits": 20}, INTEL).host(INTEL).min_cbm_bits == 20


def test_cat_overrides_are_checked() -> None:
    for bad in ({"cbm_len": 0}, {"cbm_len": 33}, {"min_cbm_bits": 21},
                {"cbm_len": 4, "min_cbm_bits": 5}, {"min_cbm_bits": -1}):
        with pytest.raises(ScenarioError):
            parse_scenario(bad, INTEL)
