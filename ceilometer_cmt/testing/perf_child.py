"""Stand-in processes for the perf tests: a real child that burns CPU on command.

The child reads one command per line on stdin and answers ``ok <data>``:

* ``burn``: the main thread spins until the next command arrives.
* ``sleep``: the main thread blocks on stdin (answers first).
* ``spawn NAME``: start a thread that sleeps on an Event; answers its TID.
* ``tburn NAME`` / ``tstop NAME``: that thread spins / sleeps again.
* ``exit``.

With ``domain=`` its ``/proc/<pid>/cmdline`` carries ``-name
guest=<domain>,debug-threads=on`` like a libvirt qemu, and with ``pid_dir=``
a pidfile ``<pid_dir>/<domain>.pid`` is written (atomically, new inode).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType

CHILD_SCRIPT = r"""
import os, select, sys, threading

threads = {}

def spin(n=20000):
    x = 0
    for _ in range(n):
        x += 1
    return x

class Worker:
    def __init__(self):
        self.go = threading.Event()
        self.tid = None
        self.ready = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()
        self.ready.wait()

    def run(self):
        self.tid = threading.get_native_id()
        self.ready.set()
        while True:
            self.go.wait()
            while self.go.is_set():
                spin()

def ack(text):
    os.write(1, ("ok %s\n" % text).encode())

buf = b""
def next_line(burning):
    global buf
    while b"\n" not in buf:
        if burning:
            while not select.select([0], [], [], 0)[0]:
                spin()
        chunk = os.read(0, 4096)
        if not chunk:
            os._exit(0)
        buf += chunk
    line, _, buf = buf.partition(b"\n")
    return line.decode().split()

ack("ready %d" % os.getpid())
burning = False
while True:
    cmd = next_line(burning)
    if not cmd:
        continue
    op = cmd[0]
    if op == "burn":
        burning = True
        ack("burn")
    elif op == "sleep":
        burning = False
        ack("sleep")
    elif op == "spawn":
        w = threads[cmd[1]] = Worker()
        ack(str(w.tid))
    elif op == "tburn":
        threads[cmd[1]].go.set()
        ack("tburn")
    elif op == "tstop":
        threads[cmd[1]].go.clear()
        ack("tstop")
    elif op == "exit":
        ack("exit")
        os._exit(0)
    else:
        ack("unknown")
"""


class Child:
    """A real process to count; always ``close()`` it (or use ``with``)."""

    def __init__(self, domain: str | None = None, pid_dir: str | None = None) -> None:
        argv = [sys.executable, "-c", CHILD_SCRIPT]
        if domain is not None:
            argv += ["-name", f"guest={domain},debug-threads=on"]
        self.domain = domain
        self.pidfile: str | None = None
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True)
        self.pid = self.proc.pid
        try:
            ready = self._answer()
            assert ready == f"ready {self.pid}", ready
            if pid_dir is not None and domain is not None:
                self.pidfile = os.path.join(pid_dir, domain + ".pid")
                write_pidfile(self.pidfile, self.pid)
        except BaseException:
            self.close()
            raise

    def _answer(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ok "):
            raise RuntimeError(f"child {self.pid} said {line!r}")
        return line[3:].strip()

    def cmd(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self._answer()

    def burn(self) -> None:
        self.cmd("burn")

    def sleep(self) -> None:
        self.cmd("sleep")
        self.wait_asleep()

    def spawn(self, name: str) -> int:
        return int(self.cmd(f"spawn {name}"))

    def tids(self) -> set[int]:
        return {int(t) for t in os.listdir(f"/proc/{self.pid}/task")}

    def wait_asleep(self, timeout: float = 20.0, tids: set[int] | None = None) -> None:
        """Until no thread (of ``tids``, default all) is running, three looks in a row."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 3:
            if time.monotonic() > deadline:
                raise TimeoutError(f"child {self.pid} does not go to sleep")
            states = []
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                if tids is not None and int(tid) not in tids:
                    continue
                try:
                    with open(f"/proc/{self.pid}/task/{tid}/stat", "rb") as f:
                        stat = f.read()
                except FileNotFoundError:
                    continue
                states.append(stat[stat.rindex(b")") + 2:][:1])
            quiet = quiet + 1 if all(s in (b"S", b"D") for s in states) else 0
            time.sleep(0.01)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        if self.pidfile is not None:
            try:
                os.unlink(self.pidfile)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Child:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_pidfile(path: str, pid: int) -> None:
    """Like libvirt: a new file (new inode) holding the pid and a newline."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def as_nobody(fn: Callable[[], str]) -> tuple[str, int]:
    """Run ``fn`` in a forked child that dropped to uid/gid 65534 (nobody);
    return what it said and its exit code. An exception becomes ``OTHER <repr>``.
    The child never returns into the caller (pytest)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                msg = fn()
            except BaseException as e:  # noqa: BLE001 - report anything
                msg = f"OTHER {e!r}"
            os.write(w, msg.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return out, os.waitstatus_to_exitcode(status)
