"""The demo's stop signals: raised as Stop, held inside uninterrupted()."""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Iterator

import pytest

from ceilometer_cmt.cmd.demo_signals import (
    STOP_SIGNALS,
    SignalSafeOut,
    Stop,
    restore_signals,
    stop_on_signals,
    uninterrupted,
)


@pytest.fixture(autouse=True)
def keep_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_a_stop_signal_raises_stop_then_is_ignored() -> None:
    with pytest.raises(Stop) as caught, stop_on_signals():
        os.kill(os.getpid(), signal.SIGHUP)
        signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the handler has run by now
    assert caught.value.signum == signal.SIGHUP and str(caught.value) == "SIGHUP"
    assert all(signal.getsignal(s) is signal.SIG_IGN for s in STOP_SIGNALS)
    restore_signals()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_uninterrupted_holds_the_signal_until_its_end() -> None:
    done = []
    with pytest.raises(Stop) as caught, stop_on_signals():
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the handler has run by now
            done.append("inside")
        done.append("after")  # never: the held signal is raised as the block ends
    assert caught.value.signum == signal.SIGTERM
    assert done == ["inside"]


def test_a_signal_held_by_an_inner_block_waits_for_the_outer_one() -> None:
    done = []
    with pytest.raises(Stop) as caught, stop_on_signals():
        with uninterrupted():
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGINT)
                signal.pthread_sigmask(signal.SIG_BLOCK, [])
            done.append("outer block goes on")  # the inner end must not drop or raise it
        done.append("after")  # never
    assert caught.value.signum == signal.SIGINT
    assert done == ["outer block goes on"]


def test_signal_safe_out_writes_and_flushes() -> None:
    buf = io.StringIO()
    out = SignalSafeOut(buf)
    assert out.write("line\n") == 5
    out.flush()
    assert buf.getvalue() == "line\n" and not out.isatty()
