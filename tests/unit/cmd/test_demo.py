"""``ceilometer-cmt demo``'s options: bad values end it before it builds anything."""

from __future__ import annotations

import pytest

from ceilometer_cmt.cmd import demo


@pytest.mark.parametrize("argv", [["--instances", "0"], ["--stopped", "-1"],
                                  ["--interval", "-1"], ["--cycles", "-2"]])
def test_out_of_range_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(argv) == 2
    assert "need --instances >= 1" in capsys.readouterr().err


def test_unknown_topology_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--topology", "nope"]) == 2
    assert "unknown topology 'nope'" in capsys.readouterr().err


def test_no_fuse_exits_2_with_the_install_hint(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "fuse_problem", lambda: "no /dev/fuse")
    assert demo.main([]) == 2
    err = capsys.readouterr().err
    assert "cannot run here: no /dev/fuse" in err and demo.INSTALL_HINT in err


def test_amd_abmc_runs_short_of_mbm_counters_by_default() -> None:
    """amd-abmc's and arm64-mpam's default instances outnumber an L3
    domain's free MBM counters (the default group holds total and local
    from boot on amd-abmc, total only on MPAM, which has no local event), so
    the demo shows instances without a counter; other topologies keep 4."""
    from ceilometer_cmt.simulator.topology import PRESETS, get_topology

    for name, held in (("amd-abmc", 2), ("arm64-mpam", 1)):
        free = get_topology(name).num_mbm_cntrs - held
        assert demo.default_instances(name) > free > 0, name
    others = sorted(set(PRESETS) - {"amd-abmc", "arm64-mpam"})
    assert [demo.default_instances(name) for name in others] == [4] * len(others)


class _Built(Exception):
    pass


@pytest.mark.parametrize(("argv", "instances"), [
    (["--topology", "amd-abmc"], 8), ([], 4), (["--topology", "amd-abmc", "--instances", "3"], 3)])
def test_the_host_gets_the_topologys_default_unless_told(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], instances: int) -> None:
    built: list[int] = []

    class Host:
        log_file = None
        demo_guard = None
        cycles_done = 0

        def __init__(self, _topology: str, n: int, *_a: object, **_k: object) -> None:
            built.append(n)

        def start(self) -> None:
            raise _Built

        def stop(self, keep_log: str | None = None) -> list[str]:
            return []

    monkeypatch.setattr(demo, "fuse_problem", lambda: None)
    monkeypatch.setattr(demo, "DemoHost", Host)
    assert demo.main([*argv, "--cycles", "1"]) == 1  # start() failed: nothing ran
    assert built == [instances]
