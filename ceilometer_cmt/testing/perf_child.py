"""Stand-in processes for the perf tests: a real child that burns CPU on command.

The child runs :mod:`ceilometer_cmt.testing.perf_child_program` (by path,
``python -I -S``), which reads one command per line on stdin and answers
``ok <data>``: ``burn``, ``sleep``, ``spawn NAME``, ``tburn NAME``,
``tstop NAME``, ``exit`` (see there).

With ``domain=`` its ``/proc/<pid>/cmdline`` carries ``-name
guest=<domain>,debug-threads=on`` like a libvirt qemu, and with ``pid_dir=``
a pidfile ``<pid_dir>/<domain>.pid`` is written (atomically, new inode).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from types import TracebackType

from ceilometer_cmt.testing import perf_child_program
from ceilometer_cmt.testing.wait import wait_until


class Child:
    """A real process to count; always ``close()`` it (or use ``with``)."""

    def __init__(self, domain: str | None = None, pid_dir: str | None = None) -> None:
        argv = [sys.executable, "-I", "-S", perf_child_program.__file__]
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
        """Until no thread (of ``tids``, default all) is running, three looks in a row
        (a thread between two spins may be seen asleep once). A child that exited
        stops the wait at once."""
        quiet = [0]

        def all_asleep() -> bool:
            looks, quiet[0] = quiet[0], 0  # a look that raises is not a quiet one
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
            quiet[0] = looks + 1 if all(s in (b"S", b"D") for s in states) else 0
            return quiet[0] >= 3

        def exited() -> None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"child {self.pid} exited with {self.proc.returncode}")

        wait_until(all_asleep, what=f"child {self.pid} to sleep", timeout=timeout,
                   interval=0.01, fail=exited,
                   error=lambda _: TimeoutError(f"child {self.pid} does not go to sleep"))

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
