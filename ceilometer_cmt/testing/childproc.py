"""Children that die with their parent (``prctl(PR_SET_PDEATHSIG)``).

Used as ``preexec_fn`` for the processes the demo and the tests start
(simulator, stand-in qemus), so a parent killed with SIGKILL leaves nothing.
"""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
