"""The program a perf test child runs (:class:`ceilometer_cmt.testing.perf_child.Child`).

Started as ``python -I -S perf_child_program.py [-name guest=<domain>,...]``
(by path: it needs only this file to be readable, whatever the working
directory or user). It reads one command per line on stdin and answers
``ok <data>`` on stdout, ``ok ready <pid>`` first:

* ``burn``: the main thread spins until the next command arrives.
* ``sleep``: the main thread blocks on stdin (answers first).
* ``spawn NAME``: start a thread that sleeps on an Event; answers its TID.
* ``tburn NAME`` / ``tstop NAME``: that thread spins / sleeps again.
* ``exit``; end of stdin exits too.

It imports nothing but the standard library (``-I -S``: no site-packages, no
plugin), and reads stdin with ``os.read`` so no buffered reader hides a line
that has arrived.
"""

import os
import select
import threading


def spin(n: int = 20000) -> int:
    x = 0
    for _ in range(n):
        x += 1
    return x


class Worker:
    """A thread that sleeps on an Event, and spins while it is set."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.tid = 0
        self.ready = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()
        self.ready.wait()

    def run(self) -> None:
        self.tid = threading.get_native_id()
        self.ready.set()
        while True:
            self.go.wait()
            while self.go.is_set():
                spin()


def ack(text: str) -> None:
    os.write(1, f"ok {text}\n".encode())


class Lines:
    """stdin, one command at a time; spins while waiting if ``burning``."""

    def __init__(self) -> None:
        self.buf = b""

    def next(self, burning: bool) -> list[str]:
        while b"\n" not in self.buf:
            if burning:
                while not select.select([0], [], [], 0)[0]:
                    spin()
            chunk = os.read(0, 4096)
            if not chunk:
                os._exit(0)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode().split()


def main() -> None:
    threads: dict[str, Worker] = {}
    lines = Lines()
    ack(f"ready {os.getpid()}")
    burning = False
    while True:
        cmd = lines.next(burning)
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


if __name__ == "__main__":
    main()
