"""Start, control and always stop a simulator mount.

``Simulator``/``mount()`` run the filesystem in a child process
(``python -m ceilometer_cmt.simulator``), so a crash or a ``kill -9`` of the
caller cannot wedge the caller's own file operations; the mount uses
``auto_unmount`` and the child dies with its parent, so nothing stays
mounted.  ``simulate_main(argv)`` is the foreground command
(``ceilometer-cmt simulate``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from ceilometer_cmt.simulator.layout import FSTYPE, SUBTYPE
from ceilometer_cmt.simulator.procfs import mount_fstype
from ceilometer_cmt.simulator.topology import PRESETS

__all__ = ["FSTYPE", "SUBTYPE", "Simulator", "fuse_missing_reason", "mount", "mount_fstype",
           "simulate_main"]

_PR_SET_PDEATHSIG = 1


def fuse_missing_reason() -> str | None:
    """Why a simulator cannot mount here, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return (
            "/dev/fuse is missing: load the fuse module (modprobe fuse), or give the "
            "container --device /dev/fuse"
        )
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not found: install the fuse3 package (apt-get install fuse3)"
    try:
        ctypes.CDLL("libfuse3.so.3")
    except OSError:
        return "libfuse3 not found: install libfuse3-3 (apt-get install libfuse3-3)"
    return None


def _poll_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Call ``check`` every ``interval`` seconds until it returns True (True),
    or ``timeout`` seconds have passed (False). Its exceptions end the wait at
    once. (The simulator has its own loop: it may not import
    ``ceilometer_cmt.testing.wait``.)"""
    retrying = Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(interval),
                        retry=retry_if_result(lambda done: not done),
                        retry_error_callback=lambda _state: False)
    return bool(retrying(check))


def _die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``), and libfuse's auto_unmount cleans up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Simulator:
    """A simulator mount served by a child process.

    ``scenario`` is a file path, a dict (the scenario schema) or None.
    """

    def __init__(
        self,
        mountpoint: str,
        topology: str = "intel-2s",
        scenario: str | dict[str, Any] | None = None,
        *,
        rmids: int | None = None,
        limbo_seconds: float | None = None,
        clock: str | None = None,
        proc_root: str = "/proc",
        timeout: float = 120.0,
        die_with_parent: bool = True,
    ) -> None:
        if topology not in PRESETS:
            raise ValueError(f"unknown topology {topology!r}")
        self.mountpoint = os.path.abspath(mountpoint)
        self.topology = topology
        self._scenario = scenario
        self._rmids = rmids
        self._limbo = limbo_seconds
        self._clock = clock
        self._proc_root = proc_root
        self._timeout = timeout
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: str | None = None
        self._made_mountpoint = False
        self._client: Any = None
        self.control_path = ""

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Simulator:
        reason = fuse_missing_reason()
        if reason:
            raise RuntimeError(f"cannot start the resctrl simulator: {reason}")
        if mount_fstype(self.mountpoint) is not None:
            raise RuntimeError(f"{self.mountpoint} is already a mount point")
        try:
            self._spawn()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        self._workdir = tempfile.mkdtemp(prefix="cmt-sim-")
        self.control_path = os.path.join(self._workdir, "control.sock")
        if not os.path.isdir(self.mountpoint):
            os.makedirs(self.mountpoint)
            self._made_mountpoint = True
        argv = [
            sys.executable, "-m", "ceilometer_cmt.simulator", self.mountpoint,
            "--topology", self.topology, "--control", self.control_path,
            "--proc-root", self._proc_root,
        ]
        if isinstance(self._scenario, dict):
            path = os.path.join(self._workdir, "scenario.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self._scenario, f)
            argv += ["--scenario", path]
        elif self._scenario is not None:
            argv += ["--scenario", os.path.abspath(self._scenario)]
        if self._rmids is not None:
            argv += ["--rmids", str(self._rmids)]
        if self._limbo is not None:
            argv += ["--limbo-seconds", str(self._limbo)]
        if self._clock is not None:
            argv += ["--clock", self._clock]
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p
        )
        env["FUSE_LIBRARY_NAME"] = "fuse3"
        self._log_path = os.path.join(self._workdir, "simulator.log")
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )

    def _log(self) -> str:
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-4000:]
        except (OSError, AttributeError):
            return ""

    def _wait_ready(self) -> None:
        # A child that dies is seen at once (poll()); the timeout only bounds
        # a child that lives but never mounts. It is generous: on a loaded
        # two-core machine the child's imports alone took more than 15 s.
        if not _poll_until(self._ready, self._timeout):
            raise RuntimeError(f"resctrl simulator did not mount in time:\n{self._log()}")

    def _ready(self) -> bool:
        """Mounted and answering on the control socket (then held in
        ``_client``); raises if the child exited."""
        from ceilometer_cmt.simulator.control import ControlClient

        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"resctrl simulator exited with {self._proc.returncode}:\n{self._log()}"
            )
        if mount_fstype(self.mountpoint) != FSTYPE or not os.path.exists(self.control_path):
            return False
        try:
            client = ControlClient(self.control_path)
        except OSError:
            return False
        try:
            client.call("state")
        except OSError:
            client.close()
            return False
        self._client = client
        return True

    def stop(self) -> None:
        """Stop the child, make sure nothing stays mounted, remove temp files."""
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.close()
            self._client = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _poll_until(lambda: mount_fstype(self.mountpoint) != FSTYPE, 3)
        if mount_fstype(self.mountpoint) == FSTYPE:
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if mount_fstype(self.mountpoint) == FSTYPE:
            subprocess.run(["umount", "-l", self.mountpoint], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._made_mountpoint and mount_fstype(self.mountpoint) is None:
            with contextlib.suppress(OSError):
                os.rmdir(self.mountpoint)
            self._made_mountpoint = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -------------------------------------------------------------- control
    def control(self, cmd: str, **args: Any) -> Any:
        if self._client is None:
            raise RuntimeError("simulator is not running")
        return self._client.call(cmd, **args)

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("state")
        return result

    def fault(self, **fault: Any) -> None:
        """A ``faults:`` entry, e.g. ``fault(group="mon_groups/x", value="Error")``."""
        self.control("fault", fault=fault)

    def clear_faults(self) -> None:
        self.control("clear_faults")

    def reset_counters(self, group: str = "*") -> int:
        return int(self.control("reset_counters", group=group))

    def set_rmids(self, value: int) -> None:
        self.control("set_rmids", value=value)

    def set_limbo(self, seconds: float) -> None:
        self.control("set_limbo", value=seconds)

    def set_l3_online(self, l3_id: int, online: bool) -> None:
        """CPU hotplug of a whole L3 domain (see the ``l3_online`` command)."""
        self.control("l3_online", l3=l3_id, online=online)

    def advance(self, seconds: float) -> float:
        return float(self.control("advance", seconds=seconds))


@contextlib.contextmanager
def mount(
    mountpoint: str,
    topology: str = "intel-2s",
    scenario: str | dict[str, Any] | None = None,
    **kwargs: Any,
) -> Iterator[Simulator]:
    """Mount a simulator for the ``with`` block; always unmounted after."""
    sim = Simulator(mountpoint, topology, scenario, **kwargs)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ceilometer-cmt simulate",
        description="Mount a simulated resctrl filesystem (FUSE) and serve it until "
        "SIGINT/SIGTERM.",
    )
    p.add_argument("mountpoint")
    p.add_argument("--topology", default="intel-2s", choices=sorted(PRESETS))
    p.add_argument("--scenario", help="workload scenario file (YAML or JSON)")
    p.add_argument("--rmids", type=int, help="override info/L3_MON/num_rmids")
    p.add_argument("--limbo-seconds", type=float, help="how long freed RMIDs stay busy")
    p.add_argument("--clock", choices=("wall", "manual"), help="override the scenario clock")
    p.add_argument("--control", help="UNIX socket for run-time control (faults, RMIDs, ...)")
    p.add_argument("--proc-root", default="/proc", help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", help="libfuse debug output")
    return p


def simulate_main(argv: Sequence[str] | None = None) -> int:
    """``ceilometer-cmt simulate MOUNTPOINT ...``: serve in the foreground."""
    args = _parser().parse_args(argv)
    reason = fuse_missing_reason()
    if reason:
        print(f"ceilometer-cmt simulate: {reason}", file=sys.stderr)
        return 2
    from dataclasses import replace

    from ceilometer_cmt.simulator.control import ControlServer
    from ceilometer_cmt.simulator.fs import serve_forever
    from ceilometer_cmt.simulator.model import Model
    from ceilometer_cmt.simulator.scenario import ScenarioError, load_scenario
    from ceilometer_cmt.simulator.topology import get_topology

    topology = get_topology(args.topology)
    try:
        scenario = load_scenario(args.scenario, topology)
    except (OSError, ScenarioError) as e:
        print(f"ceilometer-cmt simulate: {e}", file=sys.stderr)
        return 2
    if args.rmids is not None:
        scenario = replace(scenario, rmids=args.rmids)
    if args.limbo_seconds is not None:
        scenario = replace(scenario, limbo_seconds=args.limbo_seconds)
    if args.clock is not None:
        scenario = replace(scenario, clock=args.clock)
    os.makedirs(args.mountpoint, exist_ok=True)
    model = Model(topology, scenario, proc_root=args.proc_root)
    server = ControlServer(model, args.control) if args.control else None
    if server:
        server.start()
    try:
        serve_forever(model, args.mountpoint, debug=args.debug)
    except RuntimeError as e:
        print(f"ceilometer-cmt simulate: cannot mount {args.mountpoint}: {e}", file=sys.stderr)
        return 1
    finally:
        if server:
            server.close()
    return 0
