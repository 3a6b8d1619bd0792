"""Per-instance pollsters: the samples' metadata."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from ceilometer_cmt import meters
from ceilometer_cmt.monitor import CycleResult, InstanceMeters
from ceilometer_cmt.pollsters import instance as instance_pollsters
from ceilometer_cmt.pollsters import runtime
from ceilometer_cmt.readings import HostCache

U = "11111111-1111-4111-8111-111111111111"
CONFIG = {"mode": "mbm_event", "mbm_total_bytes": "local_reads,remote_reads",
          "mbm_local_bytes": "local_reads"}


def _samples(meter: meters.Meter, result: CycleResult,
             monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(instance_pollsters.util, "make_sample_from_instance",
                        lambda conf, inst, **kw: made.append(kw) or kw)
    cls = getattr(instance_pollsters, meter.pollster)
    pollster = cls.__new__(cls)  # no agent: get_samples reads rt and the cache
    pollster.rt = SimpleNamespace(monitor=SimpleNamespace(lock=threading.RLock(),
                                                          count=lambda result: None))
    pollster.conf = None
    list(pollster.get_samples(None, {runtime.CACHE_KEY: result}, [SimpleNamespace(id=U)]))
    return made


@pytest.mark.parametrize("config", [CONFIG, None])
def test_mbm_samples_carry_the_counter_configuration(
        config: dict[str, str] | None, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CycleResult("resctrl", 0.0, HostCache(()), instances={U: InstanceMeters(
        occupancy=5, mbm_total_bytes=7, mbm_local_rate=1.5)}, mbm_config=config)
    extra = {} if config is None else {"mbm_config": config}
    for meter in (meters.MEMORY_BANDWIDTH_TOTAL_BYTES, meters.MEMORY_BANDWIDTH_LOCAL):
        [sample] = _samples(meter, result, monkeypatch)
        assert sample["name"] == meter.name
        assert sample["additional_metadata"] == {"cmt_backend": "resctrl", **extra}
    [sample] = _samples(meters.CACHE_OCCUPANCY, result, monkeypatch)
    assert sample["additional_metadata"] == {"cmt_backend": "resctrl"}
    # no value: no sample, never 0
    assert _samples(meters.MEMORY_BANDWIDTH_LOCAL_BYTES, result, monkeypatch) == []


def test_allocation_samples_carry_each_domains_share(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CycleResult("resctrl", 0.0, HostCache(()), instances={U: InstanceMeters(
        occupancy=5, allocation_percent=25.0, allocation_domains={1: 50.0, 0: 25.0})})
    [sample] = _samples(meters.CACHE_ALLOCATION_PERCENT, result, monkeypatch)
    assert (sample["name"], sample["unit"], sample["volume"]) == (
        "cache.allocation.percent", "%", 25.0)
    assert sample["additional_metadata"] == {
        "cmt_backend": "resctrl", "allocation_domains": {"0": 25.0, "1": 50.0}}
    [sample] = _samples(meters.CACHE_OCCUPANCY, result, monkeypatch)
    assert "allocation_domains" not in sample["additional_metadata"]
    # a host without CAT: no sample, never a made-up 100
    result.instances[U] = InstanceMeters(occupancy=5)
    assert _samples(meters.CACHE_ALLOCATION_PERCENT, result, monkeypatch) == []
