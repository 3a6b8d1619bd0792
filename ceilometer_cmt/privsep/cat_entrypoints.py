"""The guard's CAT writes through the privsep daemon: its entrypoints, and
:class:`PrivsepCatOps`, the guard's side (:class:`ceilometer_cmt.guard.ops.CatOps`).

Same context as the monitor groups (``cmt_pctxt``, one daemon), same root
(:func:`~ceilometer_cmt.privsep.entrypoints.daemon_resctrl`); the rules are
:mod:`ceilometer_cmt.privsep.cat_rules`, applied by
:class:`~ceilometer_cmt.privsep.cat_root.CatRoot`.
"""

from __future__ import annotations

import threading

from oslo_config import cfg

from ceilometer_cmt.privsep.cat_root import CatRoot
from ceilometer_cmt.privsep.entrypoints import cmt_pctxt, daemon_resctrl

_lock = threading.Lock()
_cat: CatRoot | None = None


def daemon_cat() -> CatRoot:
    """The daemon's cap groups, judged by the daemon's own config."""
    global _cat
    with _lock:
        if _cat is None:
            _cat = CatRoot(daemon_resctrl(), cfg.CONF.cmt_privsep.closid_reserve)
        return _cat


@cmt_pctxt.entrypoint
def make_cap_group(ctrl: str) -> None:
    """``mkdir`` of the guard's cap group ``ctrl`` (``<prefix>cap-<share>``)."""
    daemon_cat().make(ctrl)


@cmt_pctxt.entrypoint
def remove_cap_group(ctrl: str) -> None:
    """``rmdir`` of the guard's cap group ``ctrl``."""
    daemon_cat().remove(ctrl)


@cmt_pctxt.entrypoint
def write_cap_schemata(ctrl: str, lines: list[str]) -> None:
    """L3 cache lines, checked, to the cap group's ``schemata``."""
    daemon_cat().write_schemata(ctrl, lines)


@cmt_pctxt.entrypoint
def move_cap_threads(ctrl: str, uuid: str, domain_name: str,
                     tids: list[int]) -> list[tuple[int, int]]:
    """Threads of ``domain_name``'s qemu into cap group ``ctrl`` ("" : back to
    the default group) and its monitor group ``<prefix><uuid>``."""
    return daemon_cat().move_threads(ctrl, uuid, domain_name, tids)


class PrivsepCatOps:
    """:class:`ceilometer_cmt.guard.ops.CatOps` through the privsep daemon:
    the names go as they are; the daemon checks them against its own rules."""

    def make_ctrl_group(self, ctrl: str) -> None:
        make_cap_group(str(ctrl))

    def remove_ctrl_group(self, ctrl: str) -> None:
        remove_cap_group(str(ctrl))

    def write_schemata(self, ctrl: str, lines: list[str]) -> None:
        write_cap_schemata(str(ctrl), [str(line) for line in lines])

    def move_threads(self, ctrl: str, uuid: str, domain_name: str,
                     tids: list[int]) -> list[tuple[int, int]]:
        return [(int(t), int(e)) for t, e in move_cap_threads(
            str(ctrl), str(uuid), str(domain_name), [int(t) for t in tids])]
