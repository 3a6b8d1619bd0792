"""A fake compute host for tests, the demo and end-to-end runs.

Three real things, no mocks:

- :func:`node_xml` writes a libvirt *test driver* node file
  (``test:///path/node.xml``) whose domains carry Nova metadata, so that
  ceilometer's own ``local_instances`` discovery (method
  ``libvirt_metadata``) accepts them;
- :class:`LibvirtDaemon` runs Debian's ``libvirtd`` privately, with only the
  built-in drivers (test and remote) on a unix socket in a temporary
  directory, so that clients pay real RPC costs
  (``test+unix:///path/node.xml?socket=/tmp/.../libvirt-sock``);
- :class:`StandInQemu` is a real child process whose ``/proc/<pid>/cmdline``
  says ``-name guest=<domain>,debug-threads=on`` and whose pidfile sits where
  libvirt would put it.

No ceilometer or oslo imports: the module must be importable by every test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from xml.sax.saxutils import escape, quoteattr

from ceilometer_cmt.readings import InstanceRef
from ceilometer_cmt.testing import standin_qemu
from ceilometer_cmt.testing.childproc import die_with_parent
from ceilometer_cmt.testing.wait import wait_until

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"

#: ``virDomainState`` values the test driver accepts in ``<test:runstate>``.
RUNSTATE_RUNNING = 1
RUNSTATE_SHUTOFF = 5

LIBVIRTD = "/usr/sbin/libvirtd"


@dataclass(frozen=True)
class FakeInstance:
    """One Nova instance as the fake host shows it to libvirt and ceilometer."""

    uuid: str
    domain_name: str  # libvirt domain name, e.g. "instance-00000001"
    display_name: str  # Nova server name
    project_id: str
    user_id: str
    flavor_name: str = "m1.small"
    running: bool = True
    flavor_id: str = "2"
    vcpus: int = 1
    memory_mb: int = 512
    disk_gb: int = 1
    ephemeral_gb: int = 0
    swap_mb: int = 0
    image_id: str = "7b5bd4b3-2b8a-4d3a-9a36-d0d2f7c8d0b1"

    @property
    def ref(self) -> InstanceRef:
        return InstanceRef(self.uuid, self.domain_name)


def make_instances(
    count: int,
    *,
    running: bool = True,
    start: int = 1,
    project_id: str = "6f0e3c3cc0a34f0a9e3b4a7c1d2e5f60",
    user_id: str = "0d1e2f3a4b5c4d6e8f9a0b1c2d3e4f50",
) -> list[FakeInstance]:
    """``count`` instances with deterministic uuids and Nova-style domain names."""
    out = []
    for n in range(start, start + count):
        out.append(FakeInstance(
            uuid=str(uuidlib.UUID(int=(0xC3E7 << 112) | n)),
            domain_name=f"instance-{n:08x}",
            display_name=f"vm-{n}",
            project_id=project_id,
            user_id=user_id,
            running=running,
        ))
    return out


def domain_xml(inst: FakeInstance) -> str:
    """One test-driver ``<domain>`` with Nova's libvirt metadata."""
    state = RUNSTATE_RUNNING if inst.running else RUNSTATE_SHUTOFF
    return f"""  <domain type='test' xmlns:test={quoteattr(TEST_NS)}>
    <name>{escape(inst.domain_name)}</name>
    <uuid>{escape(inst.uuid)}</uuid>
    <memory unit='MiB'>{inst.memory_mb}</memory>
    <vcpu>{inst.vcpus}</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <metadata>
      <nova:instance xmlns:nova={quoteattr(NOVA_NS)}>
        <nova:package version="27.0.0"/>
        <nova:name>{escape(inst.display_name)}</nova:name>
        <nova:creationTime>2025-01-01 00:00:00</nova:creationTime>
        <nova:flavor name={quoteattr(inst.flavor_name)} id={quoteattr(inst.flavor_id)}>
          <nova:memory>{inst.memory_mb}</nova:memory>
          <nova:disk>{inst.disk_gb}</nova:disk>
          <nova:swap>{inst.swap_mb}</nova:swap>
          <nova:ephemeral>{inst.ephemeral_gb}</nova:ephemeral>
          <nova:vcpus>{inst.vcpus}</nova:vcpus>
        </nova:flavor>
        <nova:owner>
          <nova:user uuid={quoteattr(inst.user_id)}>user</nova:user>
          <nova:project uuid={quoteattr(inst.project_id)}>project</nova:project>
        </nova:owner>
        <nova:root type="image" uuid={quoteattr(inst.image_id)}/>
      </nova:instance>
    </metadata>
    <test:runstate>{state}</test:runstate>
  </domain>
"""


def node_xml(instances: Iterable[FakeInstance], *, cpus: int = 4) -> str:
    """A whole test-driver node file (``test:///path/node.xml``)."""
    domains = "".join(domain_xml(i) for i in instances)
    return (
        "<node>\n"
        f"{domains}"
        "  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active>"
        "<nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>\n"
        "  <memory>8192000</memory>\n"
        "</node>\n"
    ).replace("{cpus}", str(cpus))


def write_node_xml(path: str, instances: Iterable[FakeInstance]) -> str:
    """Write :func:`node_xml` atomically to ``path``; returns ``path``."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(node_xml(instances))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------
# libvirtd


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


# --------------------------------------------------------------------------
# qemu stand-ins



def qemu_name_arg(domain_name: str) -> str:
    """QEMU's ``-name`` value; a literal comma in the name is written ``,,``."""
    return "guest=" + domain_name.replace(",", ",,") + ",debug-threads=on"


class StandInQemu:
    """A real process standing in for a domain's qemu.

    ``/proc/<pid>/cmdline`` holds ``-name guest=<domain>,debug-threads=on``;
    it runs ``1 + extra_threads`` threads which sleep, or burn CPU after
    :meth:`burn` (SIGUSR1) until :meth:`rest` (SIGUSR2). ``<pid_dir>/<domain>.pid``
    is written once the threads exist, so that :attr:`tids` is complete.
    """

    def __init__(self, domain_name: str, pid_dir: str, *, extra_threads: int = 0,
                 burn: bool = False, write_pidfile: bool = True) -> None:
        self.domain_name = domain_name
        self.pid_dir = pid_dir
        self.extra_threads = extra_threads
        self._burn = burn
        self.write_pidfile = write_pidfile
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> str:
        return os.path.join(self.pid_dir, self.domain_name + ".pid")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("stand-in qemu not started")
        return self.proc.pid

    @property
    def tids(self) -> tuple[int, ...]:
        return tuple(sorted(int(t) for t in os.listdir(f"/proc/{self.pid}/task")))

    def start(self) -> StandInQemu:
        argv = [sys.executable, "-I", "-S", standin_qemu.__file__,
                "-name", qemu_name_arg(self.domain_name),
                "--cmt-mode", "burn" if self._burn else "sleep",
                "--cmt-threads", str(self.extra_threads)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                     preexec_fn=die_with_parent)
        try:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            self.proc.stdout.close()
            if line != b"ready\n":
                raise RuntimeError(f"stand-in qemu for {self.domain_name!r} did not start")
            if self.write_pidfile:
                os.makedirs(self.pid_dir, exist_ok=True)
                tmp = self.pidfile + ".tmp"
                with open(tmp, "w", encoding="ascii") as f:
                    f.write(f"{self.proc.pid}\n")
                os.replace(tmp, self.pidfile)
        except BaseException:
            self.stop()
            raise
        return self

    def burn(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)

    def rest(self) -> None:
        os.kill(self.pid, signal.SIGUSR2)

    def stop(self) -> None:
        """Kill, reap, and remove the pidfile if it still names this process."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            try:
                with open(self.pidfile, encoding="ascii") as f:
                    mine = f.read().strip() == str(proc.pid)
            except OSError:
                mine = False
            if mine:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.pidfile)

    def __enter__(self) -> StandInQemu:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class FakeHost:
    """Stand-in qemu processes for the running instances of a list.

    ``with FakeHost(instances, pid_dir) as host:`` starts one
    :class:`StandInQemu` per running instance and stops them all on exit.
    """

    def __init__(self, instances: Sequence[FakeInstance], pid_dir: str,
                 *, extra_threads: int = 0) -> None:
        self.instances = list(instances)
        self.pid_dir = pid_dir
        self.extra_threads = extra_threads
        self.qemus: dict[str, StandInQemu] = {}

    def start(self) -> FakeHost:
        try:
            for inst in self.instances:
                if inst.running:
                    q = StandInQemu(inst.domain_name, self.pid_dir,
                                    extra_threads=self.extra_threads)
                    self.qemus[inst.uuid] = q
                    q.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        errors: list[BaseException] = []
        for q in self.qemus.values():
            try:
                q.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        self.qemus.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> FakeHost:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
