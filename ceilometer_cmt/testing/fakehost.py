"""A fake compute host: Nova instances as libvirt and ceilometer see them.

Two real things, no mocks. :func:`node_xml` writes a libvirt *test driver*
node file (``test:///path/node.xml``, or served by the private daemon of
:mod:`ceilometer_cmt.testing.libvirtd`) whose domains carry Nova metadata, so
that ceilometer's own ``local_instances`` discovery (method
``libvirt_metadata``) accepts them. :class:`StandInQemu` is a real child
process (the program in :mod:`ceilometer_cmt.testing.standin_qemu`) whose
``/proc/<pid>/cmdline`` says ``-name guest=<domain>,debug-threads=on`` and
whose pidfile sits where libvirt would put it; :class:`FakeHost` runs one per
running instance. No ceilometer or oslo imports: the module must be
importable by every test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from xml.sax.saxutils import escape, quoteattr

from ceilometer_cmt.readings import InstanceRef
from ceilometer_cmt.testing import standin_qemu
from ceilometer_cmt.testing.childproc import die_with_parent

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"

#: ``virDomainState`` values the test driver accepts in ``<test:runstate>``.
RUNSTATE_RUNNING = 1
RUNSTATE_SHUTOFF = 5


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
    ``cpus``: the CPUs its threads may run on (set before any thread starts, so
    all inherit it); None keeps the caller's. A test whose expectations depend
    on the L3 domains an instance may run in must pin it (CPU 0 exists on every
    machine), never rely on how many CPUs the test machine has.
    """

    def __init__(self, domain_name: str, pid_dir: str, *, extra_threads: int = 0,
                 burn: bool = False, write_pidfile: bool = True,
                 cpus: Iterable[int] | None = None) -> None:
        self.domain_name = domain_name
        self.cpus = None if cpus is None else frozenset(cpus)
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
        cpus = self.cpus

        def preexec() -> None:
            if cpus is not None:
                os.sched_setaffinity(0, cpus)
            die_with_parent()

        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                     preexec_fn=preexec)
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
