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
