"""The telemetry stack, started once for every e2e module (it takes ~30 s)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest
import services
from services import Stack

from ceilometer_cmt.cmd import gnocchi_resources


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    missing = services.missing_requirements()
    if missing:
        reason = ("telemetry services not installed (run scripts/install-telemetry.sh): "
                  + ", ".join(missing))
        if os.environ.get("CMT_E2E_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with services.telemetry_stack(gnocchi_resources.merged_text()) as st:
        yield st
    print(f"e2e stack timings (s): {services.TIMINGS}")
    # stopped and removed: nothing listens any more, no data left behind
    for port in (st.pg.port, st.rabbit.port, st.gnocchi.port, st.aodh.port, st.webhook.port):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(1)
            assert s.connect_ex((services.LOOPBACK, port)) != 0, f"port {port} still open"
    for path in (st.pg.datadir, st.rabbit.base, st.gnocchi.base, st.ceilometer.base,
                 st.aodh.base):
        assert not path.exists(), f"{path} left behind"
