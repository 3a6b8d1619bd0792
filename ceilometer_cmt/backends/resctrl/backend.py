"""Per-instance monitor groups on resctrl: create, adopt, fill, read, remove.

One monitor group ``<prefix><uuid>`` per instance and per control group that
holds the instance's threads (normally just the default group; libvirt
``<cachetune>`` puts vCPU threads in control groups of their own, and tasks
may only join a monitor group of their own control group). Groups without the
prefix are never touched. Tasks already in a monitor group of another tool
are not moved.

Steady state (no instance or thread appeared or left) costs the value reads
(``pread`` of files kept open, see resctrl_values), one ``poll()`` over the
pidfds of all qemu processes (process_watch) and one listing of the groups:
no mkdir, no write, no lock. Threads are listed again after a change and
every RELIST-th cycle.

The groups are listed once per cycle (:func:`resctrl.list_groups`): that
listing serves adoption, the check for our groups removed behind our back and
``monitors_used``. A cycle that places threads lists them once more, under
the root lock, and decides from that listing alone which control group holds
a thread and which threads sit in other tools' monitor groups: a group that
libvirt or pqos made between the first listing and the lock is seen.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ceilometer_cmt.backends.resctrl import fs as resctrl
from ceilometer_cmt.backends.resctrl.values import GroupVanished, ValueReader
from ceilometer_cmt.errors import BackendUnavailable, InstanceGone, NotMonitored
from ceilometer_cmt.linux import procfs
from ceilometer_cmt.linux.process_watch import PidfdWatch, start_time
from ceilometer_cmt.linux.sysfs_cache import read_host_cache
from ceilometer_cmt.readings import (
    BackendCycle,
    Decision,
    HostCache,
    InstanceReading,
    InstanceRef,
)

LOG = logging.getLogger(__name__)

#: With a pidfd, threads are listed again every RELIST cycles (threads that
#: qemu forks later join the group by themselves; this catches threads
#: another tool moved away).
RELIST = 10
_NO_RMID = {errno.ENOSPC: "no free RMID (ENOSPC)", errno.EBUSY: "RMIDs in limbo (EBUSY)"}
#: A listing of the groups (resctrl.list_groups): control group -> monitor groups
Groups = dict[str, list[str]]


def valid_uuid(value: str) -> str | None:
    v = value.strip().lower()
    return v if resctrl.UUID_RE.fullmatch(v) else None


@dataclass
class _MonitoredInstance:
    uuid: str
    domain_name: str
    pid: int | None = None
    pidfile_sig: tuple[int, int] | None = None
    start_time: int | None = None  # /proc/<pid>/stat field 22: tells a reused pid
    pidfd: int | None = None  # holds the very process (see process_watch)
    settled: bool = False  # the last thread listing found nothing new
    foreign: set[int] = field(default_factory=set)  # threads left in others' groups
    stagger: int = 0  # spreads the periodic re-listing over cycles
    assigned: set[int] = field(default_factory=set)
    #: control group name ("" = default) -> absolute path of our monitor group
    groups: dict[str, str] = field(default_factory=dict)
    #: control group name -> times our monitor group there was recreated; its
    #: counters get new keys then, the instance's other groups keep theirs
    generations: dict[str, int] = field(default_factory=dict)


class ResctrlBackend:
    name = "resctrl"

    def __init__(
        self,
        resctrl_root: str,
        *,
        sysfs_root: str = "/sys",
        proc_root: str = "/proc",
        pid_dir: str = "/run/libvirt/qemu",
        prefix: str = "ceilometer-",
        verify_mount: bool = True,
        ops: resctrl.ResctrlOps | None = None,
        warn: Callable[[str], None] | None = None,
        fd_budget: int | None = None,
    ) -> None:
        if not resctrl.PREFIX_RE.fullmatch(prefix):
            raise BackendUnavailable(f"bad resctrl_group_prefix {prefix!r}")
        self.root = resctrl_root
        self.sysfs_root = sysfs_root
        self.proc_root = proc_root
        self.pid_dir = pid_dir
        self.prefix = prefix
        self.ops: resctrl.ResctrlOps = ops or resctrl.DirectOps()
        self._warn = warn or LOG.warning
        if verify_mount:
            resctrl.verify_mount(resctrl_root, proc_root)
        self.info = resctrl.read_info(resctrl_root)
        if "llc_occupancy" not in self.info.mon_features:
            raise BackendUnavailable(
                f"{resctrl_root}/info/L3_MON/mon_features lacks llc_occupancy "
                "(no cache monitoring on this CPU, or resctrl not mounted)")
        self.events = self.info.mon_features
        self._domains: list[tuple[int, str]] = resctrl.list_domains(resctrl_root)
        if fd_budget is None:
            # Value files kept open: half of what the process may open.
            fd_budget = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2
        self._tracked: dict[str, _MonitoredInstance] = {}
        self._watch = PidfdWatch(proc_root)
        self._uuids: dict[str, str | None] = {}  # instance id -> validated uuid
        self._cycle_no = 0
        self._exited: set[int] = set()
        self._values = ValueReader(self._domains, self.events, fd_budget)
        self._adopted = False
        #: counters for tests and the benchmark
        self.mkdirs = 0
        self.rmdirs = 0
        self.writes = 0

    def auto_decision(self) -> Decision:
        """May ``auto`` take this backend? Always once it opened: the
        constructor already refused a tree without ``llc_occupancy``."""
        return Decision(self.name, True, f"{self.root} has llc_occupancy")

    # ----------------------------------------------------------- host side
    def host_cache(self) -> HostCache:
        return read_host_cache(self.sysfs_root, self.info.num_rmids)

    def group_name(self, uuid: str) -> str:
        return self.prefix + uuid

    def owned_groups(self, groups: Groups | None = None) -> dict[str, list[str]]:
        """uuid (or raw name when not a uuid) -> paths of groups with our prefix,
        in ``groups`` (a :func:`resctrl.list_groups` listing; listed now if None)."""
        if groups is None:
            groups = resctrl.list_groups(self.root)
        out: dict[str, list[str]] = {}
        for path in sorted(self._paths(groups, True)):
            name = os.path.basename(path)
            key = valid_uuid(name[len(self.prefix):]) or name
            out.setdefault(key, []).append(path)
        return out

    def _paths(self, groups: Groups, ours: bool) -> list[str]:
        """Paths of the monitor groups in ``groups`` with our prefix (``ours``)
        or without it."""
        out: list[str] = []
        for ctrl, names in groups.items():
            base = resctrl.mon_groups_path(self.root, ctrl) + "/"
            out.extend(base + n for n in names if n.startswith(self.prefix) == ours)
        return out

    def _unlist(self, groups: Groups, tried: list[str]) -> None:
        """Take the monitor groups we tried to remove and that are gone (by us
        or by someone else just before) out of this cycle's listing."""
        gone = {p for p in tried if not os.path.lexists(p)}
        for ctrl, names in groups.items():
            base = resctrl.mon_groups_path(self.root, ctrl) + "/"
            names[:] = [n for n in names if base + n not in gone]

    def remove_groups(self, paths: Sequence[str]) -> list[str]:
        """rmdir our groups (under the root lock); returns the ones removed."""
        removed = []
        with resctrl.RootLock(self.root):
            for path in paths:
                if not os.path.basename(path).startswith(self.prefix):
                    continue  # never anybody else's
                try:
                    self.ops.rmdir(path)
                    self.rmdirs += 1
                    removed.append(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    self._warn(f"cannot remove resctrl group {path}: {e.strerror}")
        return removed

    # ----------------------------------------------------------- the cycle
    def sync(self, instances: Sequence[InstanceRef]) -> BackendCycle:
        cycle = BackendCycle()
        wanted: dict[str, InstanceRef] = {}
        for ref in instances:
            uuid = self._uuids.get(ref.uuid, "")
            if uuid == "":
                uuid = self._uuids[ref.uuid] = valid_uuid(ref.uuid)
                if len(self._uuids) > 4 * len(instances) + 1024:
                    self._uuids.clear()  # bounded: ids of long-gone instances
            if uuid is None:
                cycle.unmonitored[ref.uuid] = "instance id is not a UUID"
                continue
            wanted[uuid] = ref
        try:
            groups: Groups | None = resctrl.list_groups(self.root)
        except OSError:
            groups = None
        if not self._adopted:
            swept = self._adopt(wanted, groups)
            if groups is not None:
                self._unlist(groups, swept)
        gone = [u for u in self._tracked if u not in wanted]
        for u in gone:
            self._watch.unwatch(self._tracked[u].pidfd)
        if gone:
            paths = [p for u in gone for p in self._tracked.pop(u).groups.values()]
            for p in paths:
                self._values.forget(p)
            self.remove_groups(paths)
            if groups is not None:
                self._unlist(groups, paths)
        if groups is None:
            used, present = None, None
        else:
            used = len(groups) + sum(map(len, groups.values()))
            present = set(self._paths(groups, True))
        mkdirs = self.mkdirs
        ctx = _CycleContext(self)
        self._cycle_no += 1
        self._exited = self._watch.exited()
        try:
            for uuid, ref in wanted.items():
                tracked = self._tracked.get(uuid)
                if tracked is None or tracked.domain_name != ref.domain_name:
                    if tracked is not None:
                        self._watch.unwatch(tracked.pidfd)
                    tracked = self._tracked[uuid] = _MonitoredInstance(
                        uuid, ref.domain_name, groups=tracked.groups if tracked else {},
                        # the groups stay, and so do their counter keys
                        generations=tracked.generations if tracked else {},
                        stagger=zlib.crc32(uuid.encode()) % RELIST)
                gone = [] if present is None else [
                    c for c, p in tracked.groups.items() if p not in present]
                if gone:
                    # Removed behind our back (open files may still answer):
                    # recreate; counters restart, the monitor carries the offset.
                    LOG.warning("instance %s: monitor group removed by someone else; "
                                "recreating it", uuid)
                    self._drop_groups(tracked, gone)
                try:
                    if not self._steady(tracked):
                        self._ensure(tracked, ctx)
                    try:
                        cycle.readings[uuid] = self._read(tracked)
                    except GroupVanished as e:
                        # Removed behind our back: recreate it (counters restart,
                        # the monitor carries the offset).
                        LOG.warning("instance %s: %s; recreating it", uuid, e)
                        self._drop_groups(tracked, [
                            c for c, p in tracked.groups.items() if p == e.path])
                        self._ensure(tracked, ctx)
                        cycle.readings[uuid] = self._read(tracked)
                except (InstanceGone, NotMonitored, GroupVanished) as e:
                    cycle.unmonitored[uuid] = str(e)
                except OSError as e:
                    cycle.unmonitored[uuid] = f"resctrl error: {e}"
                    LOG.warning("instance %s: resctrl error: %s", uuid, e)
        finally:
            ctx.close()
        cycle.monitors_used = None if used is None else used + self.mkdirs - mkdirs
        return cycle

    def _drop_groups(self, t: _MonitoredInstance, ctrls: list[str]) -> None:
        """Forget our vanished groups in ``ctrls``; they are made again with new
        counter keys. The other groups keep their files and keys: a counter that
        did not restart must not be counted twice."""
        for ctrl in ctrls:
            self._values.forget(t.groups.pop(ctrl))
            t.generations[ctrl] = t.generations.get(ctrl, 0) + 1
        t.assigned.clear()
        t.settled = False

    def close(self) -> None:
        """Groups stay for the next agent to adopt; pidfds and files are closed."""
        self._watch.close()
        self._values.close()
        self._tracked.clear()
        self._adopted = False

    # ----------------------------------------------------------- internals
    def _adopt(self, wanted: dict[str, InstanceRef], groups: Groups | None) -> list[str]:
        """First cycle: take over our groups of local instances, sweep the rest
        (returns the groups it tried to remove). ``groups``: this cycle's listing."""
        orphans = []
        for key, paths in self.owned_groups(groups).items():
            if key in wanted:
                tracked = _MonitoredInstance(key, wanted[key].domain_name)
                for path in paths:
                    ctrl_dir = os.path.dirname(os.path.dirname(path))
                    ctrl = "" if os.path.samefile(ctrl_dir, self.root) else \
                        os.path.basename(ctrl_dir)
                    tracked.groups[ctrl] = path
                    tracked.assigned |= resctrl.read_tasks(path)
                self._tracked[key] = tracked
            else:
                orphans.extend(paths)
        if orphans:
            removed = self.remove_groups(orphans)
            LOG.info("removed %d stale resctrl groups with prefix %r", len(removed),
                     self.prefix)
        self._adopted = True
        return orphans

    def _steady(self, t: _MonitoredInstance) -> bool:
        """Nothing to check this cycle: the pidfd says the very process lives,
        the last thread listing found nothing new, not its re-listing cycle."""
        return bool(t.settled and t.pidfd is not None and t.groups
                    and t.pidfd not in self._exited
                    and (self._cycle_no + t.stagger) % RELIST)

    def _resolve(self, t: _MonitoredInstance) -> list[int]:
        """Current TIDs of the instance's qemu, re-resolved when the process changed."""
        if t.pid is not None:
            if t.pidfd is not None:
                if t.pidfd not in self._exited:
                    try:
                        return list(procfs.list_tids(self.proc_root, t.pid))
                    except InstanceGone:
                        pass
            else:
                try:
                    st = os.stat(os.path.join(self.pid_dir, t.domain_name + ".pid"))
                    if ((st.st_ino, st.st_mtime_ns) == t.pidfile_sig
                            and start_time(self.proc_root, t.pid) == t.start_time):
                        return list(procfs.list_tids(self.proc_root, t.pid))
                except (FileNotFoundError, InstanceGone):
                    pass
        self._watch.unwatch(t.pidfd)
        t.pid = t.pidfd = None
        t.settled = False
        proc = procfs.find_qemu_process(self.pid_dir, self.proc_root, t.domain_name)
        st = os.stat(os.path.join(self.pid_dir, t.domain_name + ".pid"))
        t.pidfile_sig = (st.st_ino, st.st_mtime_ns)
        t.start_time = start_time(self.proc_root, proc.pid)
        t.pidfd = self._watch.watch(proc.pid)
        t.pid = proc.pid
        return list(proc.tids)

    def _ensure(self, t: _MonitoredInstance, ctx: _CycleContext) -> None:
        # the re-listing cycle of a settled instance (without a pidfd, _ensure
        # runs every cycle: the tasks files are still read only then)
        periodic = t.settled and (self._cycle_no + t.stagger) % RELIST == 0
        tids = self._resolve(t)
        if periodic and t.groups:
            # A periodic check: trust the kernel's lists, not our memory, so a
            # thread another tool moved out is written back.
            t.assigned = set().union(*(resctrl.read_tasks(p) for p in t.groups.values()))
        live = set(tids)
        t.assigned &= live
        t.foreign &= live
        new = [tid for tid in tids if tid not in t.assigned and tid not in t.foreign]
        t.settled = not new
        if not new and t.groups:
            return
        ctx.lock()
        by_ctrl = ctx.ctrl_of(new)
        foreign = ctx.foreign_mon_members()
        for ctrl in sorted(set(by_ctrl.values())):
            mine = [tid for tid in new if by_ctrl[tid] == ctrl and tid not in foreign]
            skipped = [tid for tid in new if by_ctrl[tid] == ctrl and tid in foreign]
            if skipped:
                LOG.warning("instance %s: %d thread(s) sit in another tool's monitor group; "
                            "left there, their cache use is not counted", t.uuid, len(skipped))
                t.foreign.update(skipped)
            if not mine:
                continue
            path = t.groups.get(ctrl) or self._make_group(t, ctrl, ctx)
            failures = self.ops.write_tasks(os.path.join(path, "tasks"), mine, t.domain_name)
            self.writes += len(mine)
            failed = {tid for tid, err in failures if err != errno.ESRCH}
            for tid, err in failures:
                if err != errno.ESRCH:
                    LOG.warning("instance %s: cannot move thread %d into %s: %s (%s)",
                                t.uuid, tid, path, os.strerror(err),
                                resctrl.last_cmd_status(self.root))
            t.assigned.update(tid for tid in mine if tid not in failed)
        if not t.groups:
            raise NotMonitored("no thread could be placed in a monitor group")

    def _make_group(self, t: _MonitoredInstance, ctrl: str, ctx: _CycleContext) -> str:
        if ctx.no_rmid:
            raise NotMonitored(ctx.no_rmid)
        path = os.path.join(resctrl.mon_groups_path(self.root, ctrl),
                            self.group_name(t.uuid))
        try:
            self.ops.mkdir(path)
            self.mkdirs += 1
        except FileExistsError:
            pass  # made by a second agent on this host: share it
        except OSError as e:
            if e.errno in _NO_RMID:
                ctx.no_rmid = _NO_RMID[e.errno]
                if e.strerror and e.strerror != os.strerror(e.errno):
                    ctx.no_rmid += f": {e.strerror}"  # the privsep daemon's reserve
                status = resctrl.last_cmd_status(self.root)
                ctx.warn_once(f"cannot create resctrl monitor group: {ctx.no_rmid}; "
                              f"last_cmd_status: {status}; affected instances stay "
                              "unmonitored and are retried next cycle")
                raise NotMonitored(ctx.no_rmid) from e
            raise
        t.groups[ctrl] = path
        return path

    def _read(self, t: _MonitoredInstance) -> InstanceReading:
        reading = InstanceReading({}, {}, {})
        gens = t.generations
        for ctrl, path in sorted(t.groups.items()):
            self._values.read(reading, path, ctrl, _gen(gens, ctrl))
        return reading


def _gen(generations: dict[str, int], ctrl: str) -> str:
    """The counter key suffix of our group in control group ``ctrl``."""
    n = generations.get(ctrl, 0)
    return f"#{n}" if n else ""


class _CycleContext:
    """What one sync learns lazily and shares between instances."""

    def __init__(self, backend: ResctrlBackend) -> None:
        self.b = backend
        self._lock: resctrl.RootLock | None = None
        self._groups: Groups | None = None
        self._ctrl_members: dict[int, str] | None = None
        self._foreign: set[int] | None = None
        self.no_rmid: str | None = None
        self._warned = False

    def lock(self) -> None:
        if self._lock is None:
            self._lock = resctrl.RootLock(self.b.root).__enter__()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def warn_once(self, msg: str) -> None:
        if not self._warned:
            self._warned = True
            self.b._warn(msg)

    def groups(self) -> Groups:
        """The groups listed under the root lock, once per cycle: what ctrl_of
        and foreign_mon_members decide from."""
        self.lock()  # taken once per cycle; a no-op when held
        if self._groups is None:
            self._groups = resctrl.list_groups(self.b.root)
        return self._groups

    def ctrl_of(self, tids: list[int]) -> dict[int, str]:
        """tid -> control group; a tid in no created group is in the default one."""
        if self._ctrl_members is None:
            members: dict[int, str] = {}
            for ctrl in self.groups():
                if ctrl:
                    for tid in resctrl.read_tasks(os.path.join(self.b.root, ctrl)):
                        members[tid] = ctrl
            self._ctrl_members = members
        return {tid: self._ctrl_members.get(tid, "") for tid in tids}

    def foreign_mon_members(self) -> set[int]:
        """TIDs in monitor groups that are not ours."""
        if self._foreign is None:
            found: set[int] = set()
            for path in self.b._paths(self.groups(), False):
                found |= resctrl.read_tasks(path)
            self._foreign = found
        return self._foreign
