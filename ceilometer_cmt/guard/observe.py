"""What one guard cycle reads: occupancy percent per instance and L3 domain,
the control groups its threads are in, CLOSIDs, and the L3 allocation info.

Read-only, and only files: the resctrl root, the proc root and libvirt's pid
directory are values, as for the backends.

Where the occupancy comes from.  The guard reads the polling agent's own
monitor groups, ``<prefix><uuid>`` under every control group (the default
one, ours, anyone's), and sums them per L3 domain; it never makes or removes
a monitor group to *measure*.  A second monitor group per instance would
take a second RMID for the same threads (RMIDs are scarce, and a thread is
in only one monitor group, so one of the two would read nothing), and the
agent's sweep of groups with its prefix would fight it.  So without the
agent's groups the guard has no data, and no data means no decision
(:mod:`policy`).  The only monitor groups the guard makes are the agent's
names under a cap group, when it moves threads there (:mod:`direct_ops`):
the kernel refuses a task in a monitor group of another control group, so
monitoring must follow the threads.

Percent of a domain: bytes over the L3's size from sysfs
(``cpu*/cache/index3``, matched by cache id as ``mon_L3_<id>`` is).
"Another instance shares the domain" (:attr:`policy.SeenInstance.neighbours`):
another running instance holds cache there now (a value above 0).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.backends.resctrl.schemata import read_cache_info
from ceilometer_cmt.errors import CmtError
from ceilometer_cmt.guard import cbm
from ceilometer_cmt.guard.policy import DEFAULT_GROUP, Closids, SeenInstance
from ceilometer_cmt.linux import procfs
from ceilometer_cmt.linux.sysfs_cache import read_cache_domains
from ceilometer_cmt.readings import LLC_OCCUPANCY


@dataclass(frozen=True)
class GuardInstance:
    """A running instance as the guard's caller lists it."""

    uuid: str
    domain_name: str
    #: ``cmt:guard=off`` in its flavor extra specs or metadata
    exempt: bool = False
    #: the project (tenant) that owns it, when the listing knows it; the
    #: notifications carry it, so that the owner's event alarms see them
    project_id: str | None = None


@dataclass
class Seen:
    """One cycle's reading of the host."""

    instances: list[SeenInstance] = field(default_factory=list)
    #: uuid -> its qemu's threads now
    tids: dict[str, list[int]] = field(default_factory=dict)
    #: uuid -> its libvirt domain name
    domain_names: dict[str, str] = field(default_factory=dict)
    #: control group names ("" the default) -> their monitor groups
    groups: fs.Groups = field(default_factory=dict)
    closids: Closids = Closids(1, 0)
    info: cbm.CacheInfo | None = None
    #: uuid -> why it could not be read (its qemu is gone, ...)
    skipped: dict[str, str] = field(default_factory=dict)

    def instance(self, uuid: str) -> SeenInstance | None:
        return next((i for i in self.instances if i.uuid == uuid), None)


def read_closids(root: str, groups: fs.Groups) -> Closids:
    """The smallest ``num_closids`` of the schemata resources (the kernel's
    ``closid_init()``), and the control groups made besides the default one."""
    counts = []
    info = os.path.join(root, "info")
    try:
        names = os.listdir(info)
    except OSError:
        names = []
    for name in names:
        text = fs.read_text(os.path.join(info, name, "num_closids"))
        if text and text.strip().isdigit():
            counts.append(int(text.strip()))
    return Closids(min(counts) if counts else 1, len([g for g in groups if g]))


def _members(root: str, groups: fs.Groups) -> dict[int, str]:
    """tid -> control group, for every thread of a made control group."""
    out: dict[int, str] = {}
    for ctrl in groups:
        if ctrl:
            for tid in fs.read_tasks(os.path.join(root, ctrl)):
                out[tid] = ctrl
    return out


def _occupancy(root: str, groups: fs.Groups, name: str, ctrls: frozenset[str],
               domains: list[tuple[int, str]]) -> dict[int, int | None]:
    """Bytes per domain summed over the monitor groups called ``name`` in the
    control groups ``ctrls`` that hold the instance's threads: a group whose
    threads all moved away (the guard's cap, or its release) still reports
    the lines its RMID filled until they are evicted, and those are not the
    instance's now (the agent leaves them out too: backends/resctrl/following.py).
    A domain where one of them gives no number is None (never a partial sum);
    {} when there is no such group."""
    paths = [os.path.join(fs.mon_groups_path(root, c), name)
             for c, mons in groups.items() if name in mons and c in ctrls]
    out: dict[int, int | None] = {}
    for path in paths:
        for dom, ddir in domains:
            try:
                value = fs.read_group_event(path, ddir, LLC_OCCUPANCY)
            except fs.ValueMissing:
                out[dom] = None
                continue
            except FileNotFoundError:
                break  # removed since the listing
            prev = out.get(dom, 0)
            if prev is not None:
                out[dom] = prev + value
    return out


def observe(root: str, proc_root: str, sysfs_root: str, pid_dir: str, prefix: str,
            listed: Sequence[GuardInstance]) -> Seen:
    seen = Seen()
    seen.groups = fs.list_groups(root)
    seen.closids = read_closids(root, seen.groups)
    seen.info = read_cache_info(root)
    sizes = {d.id: d.size for d in read_cache_domains(sysfs_root)}
    try:
        domains = fs.list_domains(root)
    except OSError:
        domains = []
    members = _members(root, seen.groups)
    raw: dict[str, dict[int, int | None]] = {}
    placed: dict[str, frozenset[str]] = {}
    for gi in listed:
        try:
            proc = procfs.find_qemu_process(pid_dir, proc_root, gi.domain_name)
        except (CmtError, OSError, ValueError) as e:
            seen.skipped[gi.uuid] = f"no qemu process: {e}"
            continue
        tids = list(proc.tids)
        seen.tids[gi.uuid] = tids
        seen.domain_names[gi.uuid] = gi.domain_name
        placed[gi.uuid] = frozenset(members.get(t, DEFAULT_GROUP) for t in tids) or \
            frozenset({DEFAULT_GROUP})
        raw[gi.uuid] = _occupancy(root, seen.groups, prefix + gi.uuid, placed[gi.uuid],
                                  domains)
    holders: dict[int, set[str]] = {}
    for uuid, occ in raw.items():
        for dom, value in occ.items():
            if value:
                holders.setdefault(dom, set()).add(uuid)
    for gi in listed:
        if gi.uuid not in raw:
            continue
        pct = {dom: None if v is None or not sizes.get(dom) else 100.0 * v / sizes[dom]
               for dom, v in raw[gi.uuid].items()}
        neighbours = frozenset(d for d, who in holders.items() if who - {gi.uuid})
        seen.instances.append(SeenInstance(gi.uuid, pct, neighbours, placed[gi.uuid], gi.exempt))
    return seen
