"""The privileged operations, behind an oslo.privsep context.

The agent can then run as an unprivileged user: mkdir/rmdir of monitor groups
and writes to ``tasks`` happen in the privsep daemon (started the way
deployments start it: ``privsep-helper`` through sudo or rootwrap, or by root).
The daemon checks every request itself: the root must be a resctrl mount (or
the simulator) and the path a monitor group whose name carries the prefix.
"""

from __future__ import annotations

import os
import re

from oslo_config import cfg
from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

from ceilometer_cmt import options, resctrl

# The daemon judges requests by its own configuration, never by the client's word.
options.register_opts(cfg.CONF)

cmt_pctxt = priv_context.PrivContext(
    "ceilometer_cmt",
    cfg_section="cmt_privsep",
    pypath=__name__ + ".cmt_pctxt",
    # DAC_OVERRIDE: resctrl files are root's; SYS_ADMIN/SYS_PTRACE: perf on
    # other users' processes (CAP_PERFMON is newer than the privsep table).
    capabilities=[caps.CAP_DAC_OVERRIDE, caps.CAP_SYS_ADMIN, caps.CAP_SYS_PTRACE],
)

_NAME = r"[A-Za-z0-9_.-]+"
_GROUP_RE = re.compile(rf"^(?:{_NAME}/)?mon_groups/({_NAME})$")
_verified: set[str] = set()


def _check(root: str, rel: str, prefix: str) -> str:
    own = cfg.CONF.cmt.resctrl_group_prefix
    if not own or prefix != own:
        raise PermissionError(f"refusing prefix {prefix!r}: this daemon owns only {own!r}")
    m = _GROUP_RE.match(rel)
    if not m or not m.group(1).startswith(prefix) or ".." in rel.split("/"):
        raise PermissionError(f"refusing resctrl path {rel!r} (prefix {prefix!r})")
    if root not in _verified:
        resctrl.verify_mount(root)
        _verified.add(root)
    return os.path.join(root, rel)


@cmt_pctxt.entrypoint
def mkdir_group(root: str, rel: str, prefix: str) -> None:
    os.mkdir(_check(root, rel, prefix))


@cmt_pctxt.entrypoint
def rmdir_group(root: str, rel: str, prefix: str) -> None:
    os.rmdir(_check(root, rel, prefix))


@cmt_pctxt.entrypoint
def write_group_tasks(root: str, rel: str, prefix: str, tids: list[int]) -> list[tuple[int, int]]:
    path = _check(root, rel, prefix)
    return resctrl.write_tasks(os.path.join(path, "tasks"), [int(t) for t in tids])


class PrivsepOps:
    """:class:`ceilometer_cmt.resctrl.ResctrlOps` through the privsep daemon."""

    def __init__(self, root: str, prefix: str) -> None:
        self.root = root
        self.prefix = prefix

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def mkdir(self, path: str) -> None:
        mkdir_group(self.root, self._rel(path), self.prefix)

    def rmdir(self, path: str) -> None:
        rmdir_group(self.root, self._rel(path), self.prefix)

    def write_tasks(self, tasks_path: str, tids: list[int]) -> list[tuple[int, int]]:
        rel = self._rel(os.path.dirname(tasks_path))
        return [(int(t), int(e)) for t, e in write_group_tasks(self.root, rel, self.prefix,
                                                                list(tids))]
