"""The guard service, one cycle at a time: read, decide, apply, report.

Plain Python: its options are a :class:`GuardOptions`, its writes a
:class:`ops.CatOps` (:class:`direct_ops.DirectCatOps` in this process, the
privileged daemon's client beside it), its instances a callable (libvirt in
``ceilometer-cmt guard``, stand-ins in the tests).

One cycle (:meth:`Guard.cycle`), under ``flock(LOCK_EX)`` on the resctrl root
(resctrl.rst "Locking between applications"; libvirt's ``virResctrlLock``
takes the same lock), so that what it reads is what it acts on:

1. :func:`observe.observe` reads occupancy from the agent's monitor groups
   (why those, and only those: see that module) and where each instance's
   threads are;
2. :func:`policy.decide` gives the plan;
3. unless ``dry_run`` (the default), the plan is applied, with nothing half
   done: a cap group whose schemata write fails is removed at once, a group
   made this cycle that got no member is removed, a refused ``mkdir`` (out
   of CLOSIDs) turns the waiting caps into refusals with the kernel's text.
   A dry run reads, decides and reports the same, and writes nothing.

Monitoring follows the threads: :meth:`ops.CatOps.move_threads` puts them in
the control group and then in the agent-named monitor group under it (made
there if missing), on cap and on release alike.  A monitor group can also
be moved to another control group with ``rename(2)``, keeping its RMID and
counters (Linux 6.4, "Moving MON group directories to a new parent CTRL_MON
group is supported ... without impacting its monitoring data or assigned
tasks"; not for groups that monitor CPUs); the guard does not use it: the
write protocol names no rename, and the task writes work on every kernel.

A second guard on the host refuses to start: :class:`GuardLock` takes a
non-blocking ``flock`` on ``lock_file``.  A restarted guard adopts its cap
groups and their members from what it reads (:mod:`policy`).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.backends.resctrl.schemata import read_schemata
from ceilometer_cmt.errors import CmtError
from ceilometer_cmt.guard import cbm, observe, policy
from ceilometer_cmt.guard.ops import CatOps

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardOptions:
    resctrl_root: str = "/sys/fs/resctrl"
    proc_root: str = "/proc"
    sysfs_root: str = "/sys"
    pid_dir: str = "/run/libvirt/qemu"
    lock_file: str = "/run/ceilometer-cmt/guard.lock"
    dry_run: bool = True
    policy: policy.Options = field(default_factory=policy.Options)


@dataclass(frozen=True)
class GuardAction:
    """A cap or a release: done, or (dry run) what would be done."""

    kind: str  # "cap" | "release"
    uuid: str
    share: int | None
    reason: str
    #: L3 domains where the instance holds cache
    domains: tuple[int, ...] = ()
    done: bool = True
    #: the instance's project, when the listing gave it (now or in an
    #: earlier cycle: a released instance may have left the listing)
    project_id: str | None = None


@dataclass(frozen=True)
class GuardReport:
    cycle: int
    dry_run: bool
    actions: tuple[GuardAction, ...] = ()
    refusals: tuple[policy.Refusal, ...] = ()
    #: uuid -> percent of the ways it may fill (100 uncapped; None: unknown)
    allocation: dict[str, float | None] = field(default_factory=dict)
    #: instances in our cap groups after the cycle
    capped: int = 0
    errors: tuple[str, ...] = ()


class GuardBusy(CmtError):
    """Another guard holds the lock file."""


class GuardLock:
    """``flock(LOCK_EX | LOCK_NB)`` on the guard's lock file, held while the
    guard runs; the file says the holder's pid."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> GuardLock:
        if self._fd is not None:
            return self  # held already
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise GuardBusy(f"another ceilometer-cmt guard runs on this host (pid {holder} "
                            f"holds {self.path}): not starting a second one") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock


class Guard:
    def __init__(self, options: GuardOptions, ops: CatOps,
                 instances: Callable[[], Sequence[observe.GuardInstance]]) -> None:
        self.options = options
        self.ops = ops
        self._instances = instances
        self._state: dict[str, policy.InstanceState] = {}
        self._projects: dict[str, str] = {}  # uuid -> project, of listed instances
        self._lock = GuardLock(options.lock_file)
        self.cycles = 0

    def start(self) -> Guard:
        """Take the guard lock (:class:`GuardBusy` when another guard runs)."""
        self._lock.acquire()
        return self

    def stop(self) -> None:
        self._lock.release()

    def __enter__(self) -> Guard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cycle(self) -> GuardReport:
        o = self.options
        listed = list(self._instances())
        self.cycles += 1
        with fs.RootLock(o.resctrl_root):
            seen = observe.observe(o.resctrl_root, o.proc_root, o.sysfs_root, o.pid_dir,
                                   o.policy.prefix, listed)
            cycle = policy.Cycle(tuple(seen.instances), seen.closids,
                                 o.policy.ours(seen.groups))
            state, plan = policy.decide(self._state, cycle, o.policy)
            run = _Apply(self, seen, state, plan)
            run.apply()
        self._state = state
        result = self._with_projects(run.result(), listed)
        for a in result.actions:
            LOG.info("guard: %s%s %s to %s%%: %s", "" if a.done else "would ", a.kind,
                     a.uuid, a.share, a.reason)
        for r in result.refusals:
            LOG.warning("guard: cannot cap %s: %s", r.uuid, r.reason)
        for e in result.errors:
            LOG.warning("guard: %s", e)
        return result

    def _with_projects(self, result: GuardReport,
                       listed: Sequence[observe.GuardInstance]) -> GuardReport:
        """Each action with its instance's project: from this cycle's listing,
        else from the last listing that held the instance (a release of an
        instance that left); only listed instances are remembered after."""
        known = {**self._projects, **{i.uuid: i.project_id for i in listed if i.project_id}}
        self._projects = {i.uuid: known[i.uuid] for i in listed if i.uuid in known}
        return dataclasses.replace(result, actions=tuple(
            dataclasses.replace(a, project_id=known.get(a.uuid)) for a in result.actions))


class _Apply:
    """One plan applied (or, dry run, only reported)."""

    def __init__(self, guard: Guard, seen: observe.Seen,
                 state: dict[str, policy.InstanceState], plan: policy.GuardPlan) -> None:
        self.g = guard
        self.seen = seen
        self.state = state
        self.plan = plan
        self.dry = guard.options.dry_run
        self.actions: list[GuardAction] = []
        self.refusals: list[policy.Refusal] = list(plan.refusals)
        self.errors: list[str] = []
        #: uuid -> control group its threads are in after this cycle
        self.where: dict[str, str] = {}
        self.made: dict[str, int] = {}  # group made this cycle -> members moved in
        self.broken: dict[str, str] = {}  # group that could not be made -> why
        self.wrong: dict[str, str] = {}  # cap group left without the cap's masks -> why

    def domains(self, uuid: str) -> tuple[int, ...]:
        inst = self.seen.instance(uuid)
        return tuple(sorted(d for d, v in inst.occupancy.items() if v)) if inst else ()

    def apply(self) -> None:
        self._check_masks()
        for a in self.plan.actions:
            if a.kind == "mkdir":
                self._mkdir(a)
            elif a.kind == "cap":
                self._cap(a)
            elif a.kind == "release":
                self._release(a)
            elif a.kind == "rmdir" and not self.dry:
                self._rmdir(a.group, a.reason)
        for group, members in self.made.items():
            if not members:
                self._rmdir(group, "no instance could be moved into it")

    def _check_masks(self) -> None:
        """Adoption checks what it adopts: each cap group of ours (but those
        this plan removes) must hold the cap's L3 masks; a group with others
        (a crash between mkdir and the schemata write, another tool's write)
        gets them rewritten. One small read per group, every cycle. A group
        that keeps the wrong masks takes no new member and its members are
        not counted as capped (their allocation is what the group reads)."""
        o = self.g.options
        gone = {a.group for a in self.plan.actions if a.kind == "rmdir"}
        info, default = self.seen.info, read_schemata(o.resctrl_root, "")
        for group in sorted(o.policy.ours(self.seen.groups) - gone):
            found = read_schemata(o.resctrl_root, group)
            share = o.policy.share_of_group(group)
            if found is None or info is None or default is None or share is None:
                continue
            try:
                want = cbm.cap_schemata(info, share, default)
            except cbm.CbmError:
                continue
            if all(found.get(name) == masks for name, masks in want.items()):
                continue
            have = cbm.format_schemata({n: found.get(n, {}) for n in want}).strip()
            lines = cbm.format_schemata(want)
            LOG.warning("guard: cap group %s has %r, not the %s%% cap's %r: %s", group, have,
                        share, lines.strip(), "dry run, left as it is" if self.dry
                        else "rewriting it")
            if self.dry:
                self.wrong[group] = f"cap group {group} has {have!r}, not {lines.strip()!r}"
                continue
            try:
                self.g.ops.write_schemata(group, lines.splitlines())
            except OSError as e:
                why = (f"cap group {group} has {have!r}, not the {share}% cap's "
                       f"{lines.strip()!r}, and its rewrite was refused: {e.strerror}")
                self.wrong[group] = why
                self.broken[group] = why
                self.errors.append(why)

    def _mkdir(self, a: policy.Step) -> None:
        if self.dry:
            return
        info, default = self.seen.info, read_schemata(self.g.options.resctrl_root, "")
        try:
            if info is None or default is None:
                raise cbm.CbmError("no L3 allocation (info/L3/cbm_mask or the default "
                                   "group's schemata) on this host")
            lines = cbm.format_schemata(cbm.cap_schemata(info, a.share or 0, default))
        except cbm.CbmError as e:
            self.broken[a.group] = f"no cap mask for {a.group}: {e}"
            return
        try:
            self.g.ops.make_ctrl_group(a.group)
        except OSError as e:
            self.broken[a.group] = f"cannot make control group {a.group}: {e.strerror}"
            return
        try:
            self.g.ops.write_schemata(a.group, lines.splitlines())
        except OSError as e:
            self.broken[a.group] = (f"the kernel refused the schemata of {a.group} "
                                    f"({lines.strip()!r}): {e.strerror}; group removed")
            self._rmdir(a.group, "its schemata could not be written")
            return
        self.made[a.group] = 0

    def _cap(self, a: policy.Step) -> None:
        inst = self.seen.instance(a.uuid)
        fixup = inst is not None and a.group in inst.groups
        if a.group in self.broken:
            if fixup:  # a member of a group whose masks are wrong: said once, above
                return
            self.refusals.append(policy.Refusal(a.uuid, self.broken[a.group]))
            self.state[a.uuid] = policy.InstanceState()
            return
        if self.dry:
            if not fixup:
                self.actions.append(GuardAction("cap", a.uuid, a.share, a.reason,
                                                self.domains(a.uuid), done=False))
                self.state[a.uuid] = policy.InstanceState()
            return
        why = self._move(a.group, a.uuid)
        if why is not None:
            if fixup:
                self.errors.append(f"instance {a.uuid}: threads outside {a.group}: {why}")
            else:
                self.refusals.append(policy.Refusal(a.uuid, f"cannot move into {a.group}: {why}"))
                self.state[a.uuid] = policy.InstanceState()
            return
        self.where[a.uuid] = a.group
        if a.group in self.made:
            self.made[a.group] += 1
        if not fixup:
            self.actions.append(GuardAction("cap", a.uuid, a.share, a.reason,
                                            self.domains(a.uuid)))

    def _release(self, a: policy.Step) -> None:
        if self.dry:
            self.actions.append(GuardAction("release", a.uuid, a.share, a.reason,
                                            self.domains(a.uuid), done=False))
            return
        if a.move and a.uuid in self.seen.tids:
            why = self._move(policy.DEFAULT_GROUP, a.uuid)
            if why is not None:
                self.errors.append(f"instance {a.uuid}: cannot move back to the default "
                                   f"group: {why}")
            else:
                self.where[a.uuid] = policy.DEFAULT_GROUP
        self.actions.append(GuardAction("release", a.uuid, a.share, a.reason,
                                        self.domains(a.uuid)))

    def _move(self, group: str, uuid: str) -> str | None:
        """Move the instance's threads; why not (None: moved, at least its
        live threads)."""
        tids = self.seen.tids.get(uuid, [])
        if not tids:
            return "its qemu has no thread"
        try:
            failed = self.g.ops.move_threads(group, uuid, self.seen.domain_names[uuid], tids)
        except OSError as e:
            return f"{e.strerror} ({os.strerror(e.errno or errno.EIO)})"
        real = [(t, err) for t, err in failed if err != errno.ESRCH]
        if real:
            t, err = real[0]
            return f"{len(real)} of {len(tids)} threads refused (thread {t}: {os.strerror(err)})"
        if len(failed) == len(tids):
            return "every thread has exited"
        return None

    def _rmdir(self, group: str, reason: str) -> None:
        try:
            self.g.ops.remove_ctrl_group(group)
            LOG.info("guard: removed control group %s: %s", group, reason)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.errors.append(f"cannot remove control group {group}: {e.strerror}")

    def result(self) -> GuardReport:
        opts = self.g.options.policy
        shares: dict[str, float | None] = {}
        allocation: dict[str, float | None] = {}
        capped = 0
        for inst in self.seen.instances:
            ctrl = self.where.get(inst.uuid)
            if ctrl is None:
                mine = sorted(g for g in inst.groups if g)
                ctrl = mine[0] if mine else policy.DEFAULT_GROUP
            if opts.share_of_group(ctrl) is not None and ctrl not in self.wrong:
                capped += 1
            if ctrl not in shares:
                shares[ctrl] = self._share(ctrl)
            allocation[inst.uuid] = shares[ctrl]
        return GuardReport(self.g.cycles, self.dry, tuple(self.actions), tuple(self.refusals),
                           allocation, capped, tuple(self.errors))

    def _share(self, ctrl: str) -> float | None:
        """Percent of the ways group ``ctrl`` may fill: its largest share over
        the domains (100 for an untouched default group)."""
        info = self.seen.info
        schemata = read_schemata(self.g.options.resctrl_root, ctrl)
        if info is None or schemata is None:
            return None
        doms = {d for masks in schemata.values() for d in masks}
        found = [s for d in doms if (s := cbm.group_share(info, schemata, d)) is not None]
        return max(found) if found else None
