"""The mark of the tests that start a private libvirtd
(:class:`ceilometer_cmt.testing.libvirtd.LibvirtDaemon`)."""

from __future__ import annotations

import os

import pytest

from ceilometer_cmt.testing.libvirtd import LIBVIRTD

needs_libvirtd = pytest.mark.skipif(
    not os.access(LIBVIRTD, os.X_OK), reason="Debian's libvirt-daemon is not installed")
