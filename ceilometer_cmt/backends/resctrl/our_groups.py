"""Our monitor groups as a whole: find them, take them over at start, remove.

A group is ours when its name carries the backend's prefix (``<prefix><uuid>``);
nobody else's group is ever removed. At its first cycle the backend adopts
the groups of local instances (their counters continue) and removes the
rest (:func:`adopt`); ``ceilometer-cmt cleanup`` removes them all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

from ceilometer_cmt.backends.resctrl import following, fs
from ceilometer_cmt.backends.resctrl.monitored_instance import MonitoredInstance

LOG = logging.getLogger(__name__)


def valid_uuid(value: str) -> str | None:
    v = value.strip().lower()
    return v if fs.UUID_RE.fullmatch(v) else None


def owned(root: str, prefix: str, groups: fs.Groups) -> dict[str, list[str]]:
    """uuid (or raw name when not a uuid) -> paths of groups with our prefix
    in ``groups`` (a :func:`fs.list_groups` listing)."""
    out: dict[str, list[str]] = {}
    for path in sorted(fs.mon_group_paths(root, groups, prefix, True)):
        name = os.path.basename(path)
        key = valid_uuid(name[len(prefix):]) or name
        out.setdefault(key, []).append(path)
    return out


def unlist(root: str, groups: fs.Groups, tried: Sequence[str]) -> None:
    """Take the monitor groups we tried to remove and that are gone (by us
    or by someone else just before) out of this cycle's listing."""
    gone = {p for p in tried if not os.path.lexists(p)}
    for ctrl, names in groups.items():
        base = fs.mon_groups_path(root, ctrl) + "/"
        names[:] = [n for n in names if base + n not in gone]


def remove(root: str, prefix: str, ops: fs.ResctrlOps, paths: Sequence[str],
           warn: Callable[[str], None]) -> list[str]:
    """rmdir our groups among ``paths`` (under the root lock); returns the
    ones removed."""
    removed = []
    with fs.RootLock(root):
        for path in paths:
            if not os.path.basename(path).startswith(prefix):
                continue  # never anybody else's
            try:
                ops.rmdir(path)
                removed.append(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                warn(f"cannot remove resctrl group {path}: {e.strerror}")
    return removed


def adopt(root: str, prefix: str, owned_now: Mapping[str, list[str]],
          domain_names: Mapping[str, str]) -> tuple[dict[str, MonitoredInstance], list[str]]:
    """First cycle: our groups of the local instances (uuid -> domain name)
    become tracked instances with their members; the other groups of ours
    are orphans, to remove."""
    tracked: dict[str, MonitoredInstance] = {}
    orphans: list[str] = []
    for key, paths in owned_now.items():
        if key not in domain_names:
            orphans.extend(paths)
            continue
        t = tracked[key] = MonitoredInstance(key, domain_names[key])
        for path in paths:
            ctrl_dir = os.path.dirname(os.path.dirname(path))
            ctrl = "" if os.path.samefile(ctrl_dir, root) else os.path.basename(ctrl_dir)
            t.groups[ctrl] = path
        following.members(t)
    return tracked, orphans
