"""The MBM counter-assignment files (Linux 6.18 ABMC): parsers and readers on
fixture trees in the kernel's formats."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ceilometer_cmt.backends.resctrl import assign_files as resctrl
from ceilometer_cmt.backends.resctrl.fs import MBM_EVENTS, last_cmd_status
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing import mbm_assign_tree as abmc
from ceilometer_cmt.testing.kernel_trees import build_resctrl

INTEL_2S = get_topology("intel-2s")
AMD_CCX = get_topology("amd-ccx")


@pytest.mark.parametrize("text,current,modes", [
    ("[mbm_event]\ndefault\n", "mbm_event", ("mbm_event", "default")),
    ("[default]\nmbm_event\n", "default", ("default", "mbm_event")),
    ("[default]\n", "default", ("default",)),  # no assignable counters
    ("[mbm_event]\n", "mbm_event", ("mbm_event",)),  # CONFIG_RESCTRL_ASSIGN_FIXED
    ("default\n[mbm_event]\n", "mbm_event", ("default", "mbm_event")),
])
def test_parse_assign_mode(text: str, current: str, modes: tuple[str, ...]) -> None:
    mode = resctrl.parse_assign_mode(text)
    assert mode is not None and (mode.current, mode.modes) == (current, modes)
    assert mode.mbm_event == (current == "mbm_event")


@pytest.mark.parametrize("text", [
    None, "", "\n", "default\n", "[default\n", "default]\n", "[a]\n[b]\n", "[x y]\n",
    "[mbm_event]\nmbm_event\n", "[MBM]\n", "[\u0661]\n",
])
def test_parse_assign_mode_refuses(text: str | None) -> None:
    assert resctrl.parse_assign_mode(text) is None


@pytest.mark.parametrize("text,hexa,want", [
    ("0=32;1=32\n", False, {0: 32, 1: 32}),
    ("0=30;1=30", False, {0: 30, 1: 30}),
    ("0=0;8=7\n", False, {0: 0, 8: 7}),
    ("\n", False, {}),
    ("0=0x7f;1=0x7f;2=0x7f;3=0x7f\n", True, {0: 0x7F, 1: 0x7F, 2: 0x7F, 3: 0x7F}),
    ("0=0x15;1=33\n", True, {0: 0x15, 1: 0x33}),
])
def test_parse_domain_values(text: str, hexa: bool, want: dict[int, int]) -> None:
    assert resctrl.parse_domain_values(text, hexadecimal=hexa) == want


@pytest.mark.parametrize("text", [
    None, "0=32;", "0=32;0=31", "0:32", "=32", "0=", "a=1", "-1=3", "0=-3", "0=0x7f",
    "0=3 2", "\u0661=1", "0=\u0661", "0=1;;1=2",
])
def test_parse_domain_values_refuses(text: str | None) -> None:
    assert resctrl.parse_domain_values(text) is None


@given(st.dictionaries(st.integers(0, 4095), st.integers(0, 2**31 - 1), max_size=64),
       st.booleans())
def test_parse_domain_values_roundtrip(values: dict[int, int], hexa: bool) -> None:
    fmt = "{:#04x}" if hexa else "{}"  # "%d=0x%02x" / "%d=%d"
    text = ";".join(f"{d}={fmt.format(v)}" for d, v in values.items()) + "\n"
    assert resctrl.parse_domain_values(text, hexadecimal=hexa) == values


@given(st.text(max_size=60))
@example("0=1\n0=2")
def test_parse_domain_values_never_raises(text: str) -> None:
    out = resctrl.parse_domain_values(text)
    assert out is None or all(isinstance(k, int) and v >= 0 for k, v in out.items())


@pytest.mark.parametrize("text,want", [("1\n", True), ("0\n", False), ("0", False),
                                       (None, None), ("y\n", None), ("", None), ("2\n", None)])
def test_parse_bool_flag(text: str | None, want: bool | None) -> None:
    assert resctrl.parse_bool_flag(text) is want


@pytest.mark.parametrize("text,want", [
    ("local_reads,remote_reads\n", ("local_reads", "remote_reads")),
    ("\n", ()),
    (abmc.DEFAULT_FILTERS["mbm_local_bytes"] + "\n",
     ("local_reads", "local_non_temporal_writes", "local_reads_slow_memory")),
    (None, None), ("local_reads, remote_reads\n", None), ("a,,b\n", None), ("a,a\n", None),
])
def test_parse_event_filter(text: str | None, want: tuple[str, ...] | None) -> None:
    assert resctrl.parse_event_filter(text) == want


@pytest.mark.parametrize("text,want", [
    ("mbm_total_bytes:0=e;1=e\nmbm_local_bytes:0=e;1=e\n",
     {"mbm_total_bytes": {0: True, 1: True}, "mbm_local_bytes": {0: True, 1: True}}),
    ("mbm_total_bytes:0=_;1=e\nmbm_local_bytes:0=_;1=_\n",
     {"mbm_total_bytes": {0: False, 1: True}, "mbm_local_bytes": {0: False, 1: False}}),
    ("mbm_total_bytes:\n", {"mbm_total_bytes": {}}),
    ("", {}),
])
def test_parse_assignments(text: str, want: resctrl.Assignments) -> None:
    assert resctrl.parse_assignments(text) == want


@pytest.mark.parametrize("text", [
    None, "mbm_total_bytes 0=e\n", "mbm_total_bytes:0=x\n", "mbm_total_bytes:0=e;0=_\n",
    "mbm_total_bytes:*=e\n", "mbm_total_bytes:0=ee\n", "x:0=e\nx:1=e\n", "Unavailable\n",
    "mbm_total_bytes:0=e;\n",
])
def test_parse_assignments_refuses(text: str | None) -> None:
    assert resctrl.parse_assignments(text) is None


@given(st.dictionaries(st.sampled_from(MBM_EVENTS),
                       st.dictionaries(st.integers(0, 4095), st.booleans(), min_size=1,
                                       max_size=32), min_size=1))
def test_format_then_parse_assignments_roundtrip(want: resctrl.Assignments) -> None:
    text = "".join(resctrl.format_assignment(ev, states) for ev, states in want.items())
    assert resctrl.parse_assignments(text) == want


def test_format_assignment() -> None:
    assert resctrl.format_assignment("mbm_total_bytes", {1: True, 0: True}) == \
        "mbm_total_bytes:0=e;1=e\n"
    assert resctrl.format_assignment("mbm_local_bytes", {3: False}) == "mbm_local_bytes:3=_\n"
    assert resctrl.format_assignment("mbm_total_bytes", True) == "mbm_total_bytes:*=e\n"
    assert resctrl.format_assignment("mbm_local_bytes", False) == "mbm_local_bytes:*=_\n"
    for event, states in (("llc_occupancy", {0: True}), ("mbm_total_bytes", {}),
                          ("mbm_total_bytes", {-1: True}), ("mbm_total_bytes", {True: True}),
                          ("mbm_total_bytes\n../tasks", {0: True})):
        with pytest.raises(ValueError):
            resctrl.format_assignment(event, states)  # type: ignore[arg-type]


@pytest.mark.parametrize("topo", [AMD_CCX, INTEL_2S])
def test_counter_info_on_an_abmc_tree(tmp_path, topo) -> None:  # type: ignore[no-untyped-def]
    root = abmc.build_abmc_resctrl(str(tmp_path), topo, num_cntrs=32)
    info = resctrl.read_counter_info(root)
    assert info.mode == resctrl.AssignMode("mbm_event", ("mbm_event", "default"))
    assert info.num_cntrs == dict.fromkeys(topo.l3_ids, 32)
    # the default group holds total and local in every domain from boot
    assert info.available == dict.fromkeys(topo.l3_ids, 30)
    assert info.on_mkdir is True and info.assigning
    assert resctrl.read_event_filter(root, "mbm_local_bytes") == (
        "local_reads", "local_non_temporal_writes", "local_reads_slow_memory")
    assert resctrl.read_event_filter(root, "../../x") is None
    assert resctrl.read_bmec_config(root, "mbm_total_bytes") is None  # hidden in mbm_event
    assert resctrl.read_assignments(root) == {
        ev: dict.fromkeys(topo.l3_ids, True) for ev in MBM_EVENTS}


def test_counter_info_default_mode_and_old_kernels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = abmc.build_abmc_resctrl(str(tmp_path / "a"), AMD_CCX, mode="default", fixed=True)
    info = resctrl.read_counter_info(root)
    assert info.mode == resctrl.AssignMode("default", ("default",))
    assert info.num_cntrs == dict.fromkeys(AMD_CCX.l3_ids, 32)  # shown in any mode
    assert (info.available, info.on_mkdir, info.assigning) == (None, None, False)
    assert resctrl.read_bmec_config(root, "mbm_total_bytes") == dict.fromkeys(
        AMD_CCX.l3_ids, 0x7F)
    assert resctrl.read_bmec_config(root, "mbm_local_bytes") == dict.fromkeys(
        AMD_CCX.l3_ids, 0x15)
    assert resctrl.read_bmec_config(root, "llc_occupancy") is None
    assert resctrl.read_assignments(root) is None
    old = build_resctrl(str(tmp_path / "b"), INTEL_2S)
    assert resctrl.read_counter_info(old) == resctrl.CounterInfo(None, None, None, None)


def test_kernel_ops_assign_until_counters_run_out(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The fixture's kernel side, read back through the plugin's parsers."""
    topo = INTEL_2S
    root = abmc.build_abmc_resctrl(str(tmp_path), topo, num_cntrs=5)
    ops = abmc.AssignKernelOps(root, topo, num_cntrs=5)
    a, b = (os.path.join(root, "mon_groups", n) for n in ("ceilometer-a", "ceilometer-b"))
    ops.mkdir(a)  # total and local everywhere: 1 free per domain left
    assert resctrl.read_available_mbm_cntrs(root) == {0: 1, 1: 1}
    ops.mkdir(b)  # only total fits; mkdir itself does not fail
    assert resctrl.read_assignments(b) == {"mbm_total_bytes": {0: True, 1: True},
                                           "mbm_local_bytes": {0: False, 1: False}}
    assert last_cmd_status(root) == \
        "Failed to allocate counter for mbm_local_bytes in domain 0"
    line = resctrl.format_assignment("mbm_local_bytes", True)
    assert ops.write_assignments(b, [line]) == [(line, errno.ENOSPC)]
    assert ops.write_assignments(a, [resctrl.format_assignment(
        "mbm_local_bytes", {0: False, 1: False})]) == []
    assert ops.write_assignments(b, [line]) == []
    assert resctrl.read_assignments(b) == {
        ev: {0: True, 1: True} for ev in MBM_EVENTS}
    assert ops.write_assignments(b, ["llc_occupancy:0=e\n", "mbm_total_bytes:7=e\n",
                                     "mbm_total_bytes:0=x\n"]) == [
        ("llc_occupancy:0=e\n", errno.ENOENT), ("mbm_total_bytes:7=e\n", errno.EINVAL),
        ("mbm_total_bytes:0=x\n", errno.EINVAL)]
    ops.rmdir(b)
    assert resctrl.read_available_mbm_cntrs(root) == {0: 2, 1: 2}


def test_read_mbm_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ceilometer_cmt.simulator.topology import get_topology

    topo = get_topology("amd-abmc")
    root = abmc.build_abmc_resctrl(str(tmp_path / "a"), topo)
    assert resctrl.read_mbm_config(root) == {
        "mode": "mbm_event", **abmc.DEFAULT_FILTERS}
    root = abmc.build_abmc_resctrl(str(tmp_path / "b"), topo, mode="default")
    assert resctrl.read_mbm_config(root) == {
        "mode": "default", "mbm_total_bytes": "0=0x7f;1=0x7f",
        "mbm_local_bytes": "0=0x15;1=0x15"}
    # Intel: none of these files
    assert resctrl.read_mbm_config(build_resctrl(str(tmp_path / "c"), topo)) is None
