"""A private ``libvirtd`` that serves only libvirt's test driver.

:class:`LibvirtDaemon` runs Debian's ``libvirtd`` with only the built-in
drivers (test and remote) on a unix socket in a temporary directory, so that
clients pay real RPC costs
(``test+unix:///path/node.xml?socket=/tmp/.../libvirt-sock``) against the
node files :mod:`ceilometer_cmt.testing.fakehost` writes. As root it runs in
a private mount namespace so that the host's ``/run`` stays untouched;
stopping it kills the daemon and removes every file it had. No ceilometer or
oslo imports: the module must be importable by every test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from types import TracebackType

from ceilometer_cmt.testing.wait import wait_until

LIBVIRTD = "/usr/sbin/libvirtd"


class DaemonError(RuntimeError):
    """libvirtd did not start (the message carries its log)."""


_CONF = """\
# Private libvirtd for ceilometer-cmt tests: test driver only, unix socket only.
listen_tls = 0
listen_tcp = 0
unix_sock_dir = "{sock_dir}"
unix_sock_group = "{group}"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
max_clients = 5000
max_queued_clients = 1000
max_workers = 4
min_workers = 1
keepalive_interval = -1
log_level = 3
log_outputs = "3:file:{log}"
"""


def _can_unshare_mounts() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        r = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


class LibvirtDaemon:
    """A private ``libvirtd`` that serves only the test driver.

    Everything it writes lives in one temporary directory: the config file,
    the sockets (``sock/libvirt-sock``), the pid file, the log and its
    runtime directory. As root, libvirtd 9.0 insists on
    ``/run/libvirt/common/system.token``; to leave the host's ``/run``
    alone the daemon runs in a private mount namespace (``unshare --mount``)
    with the temporary ``run/`` directory bind-mounted over ``/run``. Driver
    modules are not loaded (``LIBVIRT_DRIVER_DIR`` is an empty directory), so
    no qemu/network/storage driver starts. Unprivileged, libvirtd uses
    ``XDG_RUNTIME_DIR``, which points into the same directory.
    """

    def __init__(
        self,
        *,
        binary: str = LIBVIRTD,
        parent_dir: str | None = None,
        start_timeout: float = 30.0,
        private_run: bool | None = None,
    ) -> None:
        self.binary = binary
        self.start_timeout = start_timeout
        self._parent_dir = parent_dir
        self._private_run = private_run
        self.base_dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # paths
    def _path(self, *parts: str) -> str:
        if self.base_dir is None:
            raise DaemonError("libvirtd is not set up")
        return os.path.join(self.base_dir, *parts)

    @property
    def socket_path(self) -> str:
        return self._path("sock", "libvirt-sock")

    @property
    def log_path(self) -> str:
        return self._path("log", "libvirtd.log")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def uri_for(self, node_xml_path: str) -> str:
        """``test+unix:///abs/node.xml?socket=<sock>`` for a node file."""
        return f"test+unix://{os.path.abspath(node_xml_path)}?socket={self.socket_path}"

    @property
    def default_uri(self) -> str:
        return f"test+unix:///default?socket={self.socket_path}"

    # lifecycle
    def start(self) -> LibvirtDaemon:
        if self.proc is not None:
            raise DaemonError("libvirtd already running")
        if not os.access(self.binary, os.X_OK):
            raise DaemonError(f"{self.binary} not found: install Debian's libvirt-daemon")
        if self.base_dir is None:
            # Short path on purpose: sun_path holds at most 107 bytes.
            self.base_dir = tempfile.mkdtemp(prefix="cmt-lvd-", dir=self._parent_dir)
            for sub in ("sock", "run", "log", "drivers", "config", "cache"):
                os.mkdir(os.path.join(self.base_dir, sub), 0o700)
            if len(self.socket_path.encode()) > 100:
                self.cleanup()
                raise DaemonError("socket path too long; pass a shorter parent_dir")
            group = "root" if os.getegid() == 0 else str(os.getegid())
            with open(self._path("config", "libvirtd.conf"), "w", encoding="utf-8") as f:
                f.write(_CONF.format(sock_dir=self._path("sock"), log=self.log_path,
                                     group=group))
        if self._private_run is None:
            self._private_run = _can_unshare_mounts()
        for name in os.listdir(self._path("sock")):
            os.unlink(self._path("sock", name))
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": self._path("config"),
            "XDG_RUNTIME_DIR": self._path("run"),
            "XDG_CONFIG_HOME": self._path("config"),
            "XDG_CACHE_HOME": self._path("cache"),
            "LIBVIRT_DRIVER_DIR": self._path("drivers"),
            "LC_ALL": "C",
        }
        daemon = [self.binary, "-f", self._path("config", "libvirtd.conf"),
                  "-p", self._path("run", "libvirtd.pid")]
        if self._private_run:
            argv = ["unshare", "--mount", "--propagation", "private", "--",
                    "/bin/sh", "-c", 'mount --bind "$1" /run && shift && exec "$@"',
                    "sh", self._path("run"), *daemon]
        else:
            argv = daemon
        log = open(self._path("log", "stderr.log"), "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, cwd=self.base_dir)
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        proc = self.proc
        assert proc is not None

        def exited() -> None:
            if proc.poll() is not None:
                raise DaemonError(f"libvirtd exited with {proc.returncode}: {self.read_log()}")

        def answers() -> bool:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(self.socket_path)
            return True

        wait_until(answers, what="libvirtd to answer on its socket",
                   timeout=self.start_timeout, interval=0.02, fail=exited,
                   error=lambda msg: DaemonError(f"{msg}: {self.read_log()}"))

    def read_log(self) -> str:
        out = []
        for name in ("stderr.log", "libvirtd.log"):
            with contextlib.suppress(OSError, DaemonError), \
                    open(self._path("log", name), encoding="utf-8", errors="replace") as f:
                out.append(f.read()[-4000:])
        return "\n".join(out)

    def kill(self) -> None:
        """Stop the daemon process (SIGTERM, then SIGKILL) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        if proc.poll() is None:
            proc.wait()
        # Anything else left in its session (there should be nothing).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Kill and start again on the same socket (clients get disconnected)."""
        self.kill()
        self.start()

    def cleanup(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def stop(self) -> None:
        """Kill the daemon and remove every file it had."""
        try:
            self.kill()
        finally:
            self.cleanup()

    def __enter__(self) -> LibvirtDaemon:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
