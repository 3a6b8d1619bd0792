"""The MBM counters the privileged daemon keeps free for other resctrl users.

In ``mbm_event`` mode (Linux 6.18, AMD ABMC) a monitor group counts memory
bandwidth only for the events a hardware counter is assigned to, and a
domain has few of them (``info/L3_MON/num_mbm_cntrs``: ``0=32;1=32`` in
the example of the kernel's Documentation/filesystems/resctrl.rst).
A hostile or buggy agent could take them all and leave pqos, Telegraf or
libvirt with ``Unassigned``. The daemon keeps ``[cmt_privsep]
mbm_counter_reserve`` free counters per domain (rule ``mbm-counter-reserve``):

- :func:`check_counter_reserve` refuses assignment lines that would leave
  fewer free than the reserve in a domain;
- :func:`counters_past_reserve` says which counters the kernel gave a group
  past the reserve on mkdir (``mbm_assign_on_mkdir``), so that the daemon
  gives them back at once.

Other tools can still take counters meanwhile (the kernel has no
reservation): the daemon only never takes the reserve itself.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping

from ceilometer_cmt.backends.resctrl.fs import MBM_EVENTS
from ceilometer_cmt.privsep.rules import refuse

RULE = "mbm-counter-reserve"
#: free MBM counters kept per domain when ``[cmt_privsep] mbm_counter_reserve``
#: is -1: an eighth of ``num_mbm_cntrs``, and at least this many (one monitor
#: group of another tool with ``mbm_total_bytes`` and ``mbm_local_bytes``)
MIN_COUNTER_RESERVE = 2


def counter_reserve(option: int, num_cntrs: Mapping[int, int] | None,
                    domains: Iterable[int]) -> dict[int, int]:
    """Free MBM counters kept per domain: ``option`` when it is set (>= 0),
    else an eighth of the domain's ``num_mbm_cntrs``, at least
    :data:`MIN_COUNTER_RESERVE`."""
    if option >= 0:
        return dict.fromkeys(domains, option)
    num = num_cntrs or {}
    return {d: max(MIN_COUNTER_RESERVE, num.get(d, 0) // 8) for d in domains}


def _line_items(line: str, domains: Iterable[int]) -> tuple[str, list[tuple[int, bool]]]:
    """A line :func:`check_assignment_lines` passed -> (event, [(domain,
    assign)]); ``*`` stands for every domain of ``domains``."""
    event, _, rest = line.rstrip("\n").partition(":")
    if rest.startswith("*"):
        return event, [(d, rest[2] == "e") for d in sorted(domains)]
    return event, [(int(d), s == "e") for d, _, s in (i.partition("=") for i in rest.split(";"))]


def check_counter_reserve(lines: list[str], available: Mapping[int, int] | None,
                          assigned: Mapping[str, Mapping[int, bool]] | None,
                          reserve: Mapping[int, int]) -> None:
    """Refuse (rule ``mbm-counter-reserve``, ENOSPC as the kernel answers
    when it has no free counter, ``rdtgroup_alloc_assign_cntr()``) checked
    ``lines`` that would leave fewer free counters in a domain than its
    ``reserve``. ``available`` is ``info/L3_MON/available_mbm_cntrs`` and
    ``assigned`` the group's ``mbm_L3_assignments``, read just before. The
    lines are played in order as the kernel does: a release (``=_``) frees a
    counter the group holds and always passes; an event the group already
    holds in a domain costs nothing there (``rdtgroup_alloc_assign_cntr()``:
    "No action required if the counter is assigned already"); ``*`` counts
    in every domain; a domain not listed costs nothing (the kernel refuses
    it, "Invalid domain id"). With a reserve of 0 the kernel alone says
    when counters run out. When ``available`` cannot be read (``default``
    mode, where the kernel refuses every assignment with EINVAL) a line
    that assigns is refused with EINVAL."""
    if not any("=e" in line for line in lines):
        return  # releases only: always allowed in our own groups
    if available is None:
        raise refuse(RULE, "info/L3_MON/available_mbm_cntrs cannot be read "
                     "(not mbm_event mode?), so no counter is assigned", err=errno.EINVAL)
    free = dict(available)
    held = {ev: dict(doms) for ev, doms in (assigned or {}).items()}
    for line in lines:
        event, items = _line_items(line, free)
        mine = held.setdefault(event, {})
        short = []
        for dom, assign in items:
            if dom not in free or assign == mine.get(dom, False):
                continue
            keep = reserve.get(dom, MIN_COUNTER_RESERVE)
            if not assign:
                free[dom] += 1
            elif keep and free[dom] - 1 < keep:
                short.append(dom)
                continue
            else:
                free[dom] -= 1
            mine[dom] = assign
        if short:
            where = ", ".join(f"domain {d} ({available[d]} free, "
                              f"{reserve.get(d, MIN_COUNTER_RESERVE)} kept)" for d in short[:8])
            raise refuse(RULE, f"{line.strip()!r} not written: it would take the MBM "
                         "counters kept free for other resctrl users such as pqos or "
                         f"libvirt ([cmt_privsep] mbm_counter_reserve) in {where}",
                         err=errno.ENOSPC)


def counters_past_reserve(available: Mapping[int, int],
                          assigned: Mapping[str, Mapping[int, bool]] | None,
                          reserve: Mapping[int, int]) -> list[str]:
    """Release lines for the counters a group holds in domains where fewer
    than the reserve are free (what ``mbm_assign_on_mkdir`` took on mkdir:
    ``rdtgroup_assign_cntrs()``, fs/resctrl/monitor.c): ``mbm_local_bytes``
    before ``mbm_total_bytes``, only as many as bring the domain back to
    its reserve."""
    free = dict(available)
    held = assigned or {}
    out = []
    for event in reversed(MBM_EVENTS):
        doms = [d for d in sorted(free) if held.get(event, {}).get(d)
                and free[d] < reserve.get(d, MIN_COUNTER_RESERVE)]
        for d in doms:
            free[d] += 1
        if doms:
            out.append(f"{event}:" + ";".join(f"{d}=_" for d in doms) + "\n")
    return out
