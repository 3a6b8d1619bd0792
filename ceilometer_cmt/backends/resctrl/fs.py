"""The resctrl filesystem, as files: mount check, info, groups, values.

Everything here takes the resctrl root (normally ``/sys/fs/resctrl``) as a
value and follows ``Documentation/filesystems/resctrl.rst``:

- ``info/L3_MON/{num_rmids,mon_features,max_threshold_occupancy}``,
  ``info/last_cmd_status``;
- control groups are directories at the root (the root itself is the default
  control group); each holds ``mon_groups/<name>`` monitor groups;
- a task is in exactly one control group and at most one monitor group, and
  may only join a monitor group of its own control group;
- ``<group>/mon_data/mon_L3_<id>/<event>`` holds a decimal number, or
  ``Unavailable`` / ``Error`` / ``Unassigned`` when the hardware gave none. With
  Sub-NUMA Clustering the top-level file is the sum of the
  ``mon_sub_L3_<node>`` directories below it.

MBM counter assignment (Linux 6.18, AMD ABMC, the ``mbm_event`` mode): the
readers of its files are in :mod:`assign_files`; the writes go through
:class:`ResctrlOps` as the others do.

Writes (mkdir, rmdir, tasks, counter assignments) go through a
:class:`ResctrlOps` object so the privileged part can run elsewhere
(oslo.privsep); :class:`DirectOps` does them in this process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ceilometer_cmt import readings
from ceilometer_cmt.errors import BackendUnavailable
from ceilometer_cmt.readings import L3_EVENTS

#: FUSE subtype under which ``ceilometer-cmt simulate`` mounts; mountinfo shows
#: it as ``fuse.cmt-resctrl-sim``. Any other filesystem (tmpfs, a plain
#: directory on the root fs) is refused when the mount is verified. The
#: simulator states its own (simulator/layout.py: the plugin does not import
#: its test oracle); tests/unit/simulator/test_independence.py checks they agree.
SIMULATOR_SUBTYPE = "cmt-resctrl-sim"
SIMULATOR_FSTYPE = f"fuse.{SIMULATOR_SUBTYPE}"
RESCTRL_FSTYPES = ("resctrl", SIMULATOR_FSTYPE)

#: The L3 events this reader knows, and the MBM ones in the kernel's
#: assignment order: :data:`ceilometer_cmt.readings.L3_EVENTS` and
#: :data:`~ceilometer_cmt.readings.MBM_EVENTS` under the names resctrl's
#: modules use.
EVENTS = L3_EVENTS
MBM_EVENTS = readings.MBM_EVENTS
NO_DATA_WORDS = ("Unavailable", "Error", "Unassigned")
_DOMAIN_RE = re.compile(r"^mon_L3_(\d+)$")
_SUB_DOMAIN_RE = re.compile(r"^mon_sub_L3_(\d+)$")
#: Root entries that are not control groups.
NOT_GROUPS = frozenset({"info", "mon_groups", "mon_data"})
#: An instance uuid as our group names carry it (lower-case, canonical); fullmatch
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: A usable ``resctrl_group_prefix``; fullmatch
PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: A listing of the groups (:func:`list_groups`): control group -> monitor groups
Groups = dict[str, list[str]]


class ValueMissing(Exception):
    """A value file gave no number; ``reason`` says why (``Unavailable``...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_value(data: bytes) -> int:
    """What one read of a mon_data file gave -> bytes counted, or
    :class:`ValueMissing` (a no-data word, or anything but a decimal number).

    The one value parser: values read through kept fds and values read by
    path both come here. The kernel's plain digits take the first test."""
    body = data.strip()
    if body.isdigit():  # bytes.isdigit: ASCII digits only
        return int(body)
    text = data.decode("ascii", "replace").strip()
    if text.isascii() and text.isdigit():
        return int(text)
    if text in NO_DATA_WORDS:
        raise ValueMissing(text)
    raise ValueMissing(f"malformed value {text[:32]!r}")


def parse_tasks(text: str) -> set[int]:
    tids = set()
    for line in text.split():
        if line.isdigit():
            tids.add(int(line))
    return tids


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_fstype(mountinfo: str, mount_point: str) -> str | None:
    """The fstype of the last mount on ``mount_point`` in a mountinfo text."""
    # The kernel escapes only space, tab, newline and backslash in mountinfo:
    # split on "\n" and " " alone, or a mount point holding \r or \x1f could
    # forge another mount's line.
    found = None
    for line in mountinfo.split("\n"):
        left, sep, right = line.partition(" - ")
        fields = left.split(" ")
        if not sep or len(fields) < 5:
            continue
        if _unescape_mountinfo(fields[4]) == mount_point:
            rfields = right.split(" ")
            if rfields and rfields[0]:
                found = rfields[0]
    return found


def verify_mount(resctrl_root: str, proc_root: str = "/proc") -> str:
    """Raise BackendUnavailable unless ``resctrl_root`` is a resctrl mount
    (or the simulator). Returns the fstype."""
    path = os.path.realpath(resctrl_root)
    try:
        with open(os.path.join(proc_root, "self", "mountinfo"), encoding="utf-8",
                  errors="surrogateescape", newline="\n") as f:
            fstype = mount_fstype(f.read(), path)
    except OSError as e:
        raise BackendUnavailable(f"cannot read mountinfo: {e}") from e
    if fstype is None:
        raise BackendUnavailable(
            f"{path} is not a mount point; mount resctrl with "
            f"'mount -t resctrl resctrl {path}' (the kernel needs resctrl: "
            "CONFIG_X86_CPU_RESCTRL on x86, CONFIG_ARM64_MPAM and CONFIG_RESCTRL_FS "
            "on arm64)")
    if fstype not in RESCTRL_FSTYPES:
        raise BackendUnavailable(f"{path} is a {fstype} mount, not resctrl")
    return fstype


@dataclass(frozen=True)
class ResctrlInfo:
    num_rmids: int | None
    mon_features: tuple[str, ...]
    max_threshold_occupancy: int | None
    num_closids: int | None
    cbm_mask: str | None


def read_text(path: str) -> str | None:
    """A small text file, or None when it cannot be read (absent, EINVAL).

    Not :func:`ceilometer_cmt.linux.files.read_attribute`: resctrl's files
    are seq_files of several lines that may pass a page, a failed read is
    an ordinary answer here (EINVAL outside the mode that serves the file),
    so every ``OSError`` is None, and the text is kept as written."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    body = text.strip()
    return int(body) if body.isdigit() else None


def read_info(root: str) -> ResctrlInfo:
    info = os.path.join(root, "info")
    feats = read_text(os.path.join(info, "L3_MON", "mon_features")) or ""
    mask = read_text(os.path.join(info, "L3", "cbm_mask"))
    return ResctrlInfo(
        num_rmids=_int_or_none(read_text(os.path.join(info, "L3_MON", "num_rmids"))),
        mon_features=tuple(f for f in feats.split() if f in EVENTS),
        max_threshold_occupancy=_int_or_none(
            read_text(os.path.join(info, "L3_MON", "max_threshold_occupancy"))),
        num_closids=_int_or_none(read_text(os.path.join(info, "L3", "num_closids"))),
        cbm_mask=mask.strip() if mask else None,
    )


def last_cmd_status(root: str) -> str:
    text = read_text(os.path.join(root, "info", "last_cmd_status"))
    return text.strip() if text else "(no info/last_cmd_status)"


def list_ctrl_groups(root: str) -> list[str]:
    """Names of the control groups made at the root ("" is the default one)."""
    names = [""]
    with os.scandir(root) as it:
        for e in it:
            if e.name not in NOT_GROUPS and e.is_dir(follow_symlinks=False):
                names.append(e.name)
    return sorted(names)


def ctrl_path(root: str, ctrl: str) -> str:
    return os.path.join(root, ctrl) if ctrl else root


def mon_groups_path(root: str, ctrl: str) -> str:
    """The ``mon_groups`` directory of control group ``ctrl`` ("" = the default one)."""
    return os.path.join(ctrl_path(root, ctrl), "mon_groups")


def list_mon_groups(root: str, ctrl: str) -> list[str]:
    try:
        with os.scandir(mon_groups_path(root, ctrl)) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def list_groups(root: str) -> Groups:
    """One listing of the groups: control group name ("" = the default one) ->
    names of its monitor groups, both sorted."""
    return {ctrl: list_mon_groups(root, ctrl) for ctrl in list_ctrl_groups(root)}


def mon_group_paths(root: str, groups: Groups, prefix: str, with_prefix: bool) -> list[str]:
    """Paths of the monitor groups in a listing whose name starts with
    ``prefix`` (``with_prefix``) or does not."""
    out: list[str] = []
    for ctrl, names in groups.items():
        base = mon_groups_path(root, ctrl) + "/"
        out.extend(base + n for n in names if n.startswith(prefix) == with_prefix)
    return out


def read_tasks(group_path: str) -> set[int]:
    text = read_text(os.path.join(group_path, "tasks"))
    return parse_tasks(text) if text else set()


def list_domains(group_path: str) -> list[tuple[int, str]]:
    """(L3 id, directory name) of ``<group>/mon_data/mon_L3_*``."""
    out = []
    with os.scandir(os.path.join(group_path, "mon_data")) as it:
        for e in it:
            m = _DOMAIN_RE.match(e.name)
            if m:
                out.append((int(m.group(1)), e.name))
    return sorted(out)


def read_value_file(path: str) -> int:
    """Open, read and close one mon_data file (a path): its bytes, or
    ValueMissing; OSError as the open or the read gives it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 64)
    finally:
        os.close(fd)
    return parse_value(data)


def find_event_files(domain_path: str, event: str) -> list[str]:
    """Where ``event`` lies in one ``mon_data/mon_L3_<id>`` directory (paths,
    nothing read): the top-level file; on an SNC layout without one, the file
    of each ``mon_sub_L3_*`` node (to be summed); [] when there are none.
    FileNotFoundError when the directory (the group) is gone."""
    top = os.path.join(domain_path, event)
    if os.path.lexists(top):
        return [top]
    return [os.path.join(domain_path, sub, event)
            for sub in sorted(os.listdir(domain_path)) if _SUB_DOMAIN_RE.match(sub)]


def sum_event_files(domain_path: str, event: str, files: list[str]) -> int:
    """The bytes of ``event`` held by ``files`` (what :func:`find_event_files`
    gave): the one top-level value or the sum of the sub-node values.
    ValueMissing when there is no file or one gives no number (never a
    partial sum); FileNotFoundError when the top-level file went (with its
    group)."""
    domain_dir = os.path.basename(domain_path)
    if not files:
        raise ValueMissing(f"no {event} in {domain_dir}")
    total = 0
    for path in files:
        try:
            total += read_value_file(path)
        except FileNotFoundError as e:
            node = os.path.dirname(path)
            if node == domain_path:
                raise
            # the group exists: this node has no value
            raise ValueMissing(f"no {event} in {domain_dir}/{os.path.basename(node)}") from e
    return total


def read_group_event(group_path: str, domain_dir: str, event: str) -> int:
    """Bytes of ``event`` in one L3 domain of a group, found and read now
    (:func:`find_event_files`, then :func:`sum_event_files`); ValueMissing
    when there are none, FileNotFoundError when the group is gone."""
    base = os.path.join(group_path, "mon_data", domain_dir)
    return sum_event_files(base, event, find_event_files(base, event))


#: a group's file of MBM counter assignments (``res_common_files[]``,
#: fs/resctrl/rdtgroup.c); read and written by :mod:`assign_files`
ASSIGNMENTS_FILE = "mbm_L3_assignments"


class ResctrlOps(Protocol):
    """The privileged operations. Paths are absolute, under the resctrl root."""

    def mkdir(self, path: str) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def write_tasks(self, tasks_path: str, tids: list[int],
                    domain_name: str = "") -> list[tuple[int, int]]:
        """Write each tid with its own write(); return (tid, errno) of failures.
        ``domain_name``: the libvirt domain whose qemu threads these are (the
        privsep daemon writes only threads of that guest's qemu)."""
        ...

    def write_assignments(self, group_path: str, lines: list[str]) -> list[tuple[str, int]]:
        """Write each :func:`assign_files.format_assignment` line to the group's
        ``mbm_L3_assignments`` with its own write(); return (line, errno) of
        the lines the kernel refused (ENOSPC: no free counter in a domain;
        ``info/last_cmd_status`` says which)."""
        ...

    def kept_free(self) -> dict[int, int]:
        """MBM counters per L3 domain that writes through these operations
        leave free for other resctrl users (the privsep daemon's
        ``[cmt_privsep] mbm_counter_reserve``); empty when none are kept."""
        ...


class DirectOps:
    """Privileged operations done by this process (it must be allowed to)."""

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def write_tasks(self, tasks_path: str, tids: list[int],
                    domain_name: str = "") -> list[tuple[int, int]]:
        return write_tasks(tasks_path, tids)

    def write_assignments(self, group_path: str, lines: list[str]) -> list[tuple[str, int]]:
        return write_assignments(os.path.join(group_path, ASSIGNMENTS_FILE), lines)

    def kept_free(self) -> dict[int, int]:
        return {}


def write_tasks(tasks_path: str, tids: Iterable[int]) -> list[tuple[int, int]]:
    failures = []
    fd = os.open(tasks_path, os.O_WRONLY)
    try:
        for tid in tids:
            try:
                os.write(fd, b"%d\n" % tid)
            except OSError as e:
                failures.append((tid, e.errno or errno.EIO))
    finally:
        os.close(fd)
    return failures


def write_assignments(path: str, lines: Iterable[str]) -> list[tuple[str, int]]:
    """Each line (a newline added where it has none) with its own write() to
    ``mbm_L3_assignments`` at ``path``: the kernel stops a write at its first
    failing line (``mbm_L3_assignments_write()``), so one line per write
    lets the others apply. (line, errno) of the failures."""
    failures = []
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for line in lines:
            try:
                os.write(fd, (line if line.endswith("\n") else line + "\n").encode("ascii"))
            except OSError as e:
                failures.append((line, e.errno or errno.EIO))
    finally:
        os.close(fd)
    return failures


class RootLock:
    """``flock(LOCK_EX)`` on the resctrl root, as the kernel document asks of
    every tool that changes groups (libvirt, pqos, runc do the same)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._fd: int | None = None

    def __enter__(self) -> RootLock:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
