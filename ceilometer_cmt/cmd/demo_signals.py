"""The demo's stop signals: Ctrl-C, SIGTERM and SIGHUP end it cleanly.

Inside :func:`stop_on_signals` a stop signal raises :class:`Stop` (a
``BaseException``, so no ``except Exception`` eats it) wherever the demo is,
and the demo's ``finally`` removes everything it made. Inside
:func:`uninterrupted` the signal is held until the block ends, so that a child
process is always recorded before the demo can stop and a line of output
(:class:`SignalSafeOut`) is always written whole.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import TextIO


class Stop(BaseException):
    """A signal asked the demo to end (BaseException: no ``except Exception`` eats it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Signals:
    """Stop signals become :class:`Stop`, except inside :func:`uninterrupted`.

    There they are held and raised at its end: a child process is always
    recorded before the demo can be stopped (a ``Stop`` raised inside
    ``Popen`` would leak the child), a JSON line is always written whole.
    Blocking signals with ``pthread_sigmask`` instead would be inherited by
    the children started meanwhile.
    """

    depth = 0
    pending: int | None = None


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if _Signals.depth:
        if _Signals.pending is None:
            _Signals.pending = signum
        return
    # one stop only: the cleanup that follows must not be interrupted
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Stop(signum)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    _Signals.depth += 1
    try:
        yield
    finally:
        _Signals.depth -= 1
        if not _Signals.depth:  # a held signal waits for the outermost block
            signum, _Signals.pending = _Signals.pending, None
            if signum is not None and signal.getsignal(signum) is _on_signal:
                _on_signal(signum, None)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    for s in STOP_SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s in STOP_SIGNALS:  # ignore during cleanup, restored by main
            signal.signal(s, signal.SIG_IGN)


def restore_signals() -> None:
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_DFL if s != signal.SIGINT else signal.default_int_handler)


class SignalSafeOut:
    """A text stream whose writes are never cut by a stop signal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        with uninterrupted():
            n = self.stream.write(text)
            self.stream.flush()
            return n

    def flush(self) -> None:
        with uninterrupted():
            self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()
