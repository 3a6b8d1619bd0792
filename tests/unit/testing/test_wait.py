"""testing.wait.wait_until: the one wait-until-ready loop (tenacity)."""

from __future__ import annotations

import pytest

from ceilometer_cmt.testing.wait import wait_until


def test_returns_the_first_truthy_value_and_treats_errors_as_not_yet() -> None:
    tries: list[int] = []

    def check() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionRefusedError("not up")
        return "ok" if len(tries) >= 3 else ""

    assert wait_until(check, what="x", timeout=10, interval=0.001) == "ok"
    assert len(tries) == 3


def test_times_out_naming_what_and_the_last_error() -> None:
    def check() -> bool:
        raise ConnectionRefusedError("still down")

    class Mine(Exception):
        pass

    with pytest.raises(Mine, match=r"timed out after 0s waiting for the API "
                                   r"\(last error: ConnectionRefusedError\('still down'\)\)"):
        wait_until(check, what="the API", timeout=0.05, interval=0.01, error=Mine)
    with pytest.raises(TimeoutError, match="waiting for a sample$"):
        wait_until(lambda: None, what="a sample", timeout=0.05, interval=0.01)


def test_fail_stops_at_once_with_its_own_error() -> None:
    tries: list[int] = []

    def exited() -> None:
        if tries:
            raise RuntimeError("daemon exited with 1")

    def check() -> bool:
        tries.append(1)
        return False

    with pytest.raises(RuntimeError, match="daemon exited with 1"):
        wait_until(check, what="x", timeout=60, interval=0.001, fail=exited)
    assert tries == [1]
