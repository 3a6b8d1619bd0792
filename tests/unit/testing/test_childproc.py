"""Stand-in processes die with their parent, even when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.support.procutil import alive

PARENT = """
import sys
from ceilometer_cmt.testing.fakehost import StandInQemu
q = StandInQemu("instance-orphan", sys.argv[1]).start()
print(q.pid, flush=True)
sys.stdin.read()
"""


def test_stand_in_dies_when_its_parent_is_killed(tmp_path):  # type: ignore[no-untyped-def]
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = None
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)
