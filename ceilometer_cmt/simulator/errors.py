"""The one error the simulator's state machine raises: an errno for the
syscall, with the line the kernel would put in ``info/last_cmd_status``.

The model (``model``, ``rmids``, ``tasks``, ``writes``, ``counters``) raises
it; :mod:`.fs` maps it to the FUSE errno.  It knows nothing of paths.
"""

from __future__ import annotations

import os


class SimError(Exception):
    """An errno for the syscall; ``status`` is the kernel's last_cmd_status
    text for it ("" when the kernel writes none).  :class:`.model.Model`
    appends ``status`` to ``info/last_cmd_status`` before the error leaves it."""

    def __init__(self, err: int, status: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.errno = err
        self.status = status
