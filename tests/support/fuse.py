"""The mark of tests that mount the resctrl simulator: they need FUSE 3
(Debian fuse3, libfuse3-3) and root (the mount uses ``allow_other``)."""

from __future__ import annotations

import os

import pytest

from ceilometer_cmt.simulator import fuse_missing_reason

_reason = fuse_missing_reason()
if _reason is None and os.geteuid() != 0:
    _reason = "mounting the simulator with allow_other needs root"
needs_fuse_root = pytest.mark.skipif(_reason is not None, reason=f"no FUSE here: {_reason}")
