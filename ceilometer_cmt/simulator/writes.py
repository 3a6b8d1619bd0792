"""What writes to ``cpus``, ``cpus_list``, ``schemata``, ``mode`` and
``info/L3_MON/max_threshold_occupancy`` do, and the kernel's parsers for
them (``kstrtoint``, ``cpulist_parse``, ``cpumask_parse``, the CBM checks of
``fs/resctrl/ctrlmondata.c`` and the overlap checks of ``rdtgroup.c``; see
doc/kernel-facts-cat.md).

Each function takes the groups and topology it needs and raises
:class:`.errors.SimError` with the kernel's last_cmd_status line.
"""

from __future__ import annotations

import errno
import re

from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Group
from ceilometer_cmt.simulator.kstr import kstrtoul, strim, strsep
from ceilometer_cmt.simulator.topology import Topology

_KSTRTOINT = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


def kstrtoint(text: str) -> int | None:
    """The kernel's ``kstrtoint(s, 0, &v)``: base prefixes, int range."""
    if not _KSTRTOINT.match(text):
        return None
    value = int(text, 0) if not re.match(r"^[+-]?0[0-7]+$", text) else int(text, 8)
    if not -(2**31) <= value < 2**31:
        return None
    return value


def parse_cpu_list(text: str) -> set[int] | None:
    text = text.strip()
    cpus: set[int] = set()
    if not text:
        return cpus
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+)/(\d+))?)?", part.strip())
        if not m:
            return None
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            return None
        used, size = (int(m.group(3)), int(m.group(4))) if m.group(3) else (1, 1)
        if used == 0 or used > size:
            return None
        cpus.update(c for c in range(lo, hi + 1) if (c - lo) % size < used)
    return cpus


def parse_cpu_mask(text: str, nr_cpus: int) -> set[int] | None:
    text = text.strip()
    if not text:
        return set()
    value = 0
    for chunk in text.split(","):
        if not re.fullmatch(r"[0-9a-fA-F]{1,8}", chunk):
            return None
        value = (value << 32) | int(chunk, 16)
    if value >> nr_cpus:
        return None
    return {c for c in range(nr_cpus) if value >> c & 1}


# ------------------------------------------------------------------ cpus
def parse_cpus(topology: Topology, data: bytes, as_list: bool) -> set[int]:
    """The CPUs written to ``cpus_list`` (``as_list``) or ``cpus``."""
    text = data.decode("utf-8", "replace")
    nr = max(topology.cpus) + 1
    new = parse_cpu_list(text) if as_list else parse_cpu_mask(text, nr)
    if new is None:
        raise SimError(errno.EINVAL, "Bad CPU list/mask\n")
    if not new <= set(topology.cpus):
        raise SimError(errno.EINVAL, "Can only assign online CPUs\n")
    return new


def check_mon_cpus(group: Group, new: set[int]) -> None:
    assert group.parent is not None
    if not new <= group.parent.cpus:
        raise SimError(errno.EINVAL, "Can only add CPUs to mongroup that belong to parent\n")


def check_ctrl_cpus(group: Group, new: set[int]) -> None:
    if group.cpus - new and group.is_root:
        raise SimError(errno.EINVAL, "Can't drop CPUs from default group\n")


def assign_cpus(group: Group, new: set[int], root: Group, ctrls: list[Group]) -> None:
    """Give ``new`` to ``group``; a CPU belongs to one group of each level:
    the others lose it, dropped CPUs go back to the root (or the parent)."""
    if group.kind == "mon":
        assert group.parent is not None
        added = new - group.cpus
        for sibling in group.parent.children.values():
            if sibling is not group:
                sibling.cpus -= added
        group.cpus = set(new)
        return
    root.cpus |= group.cpus - new
    added = new - group.cpus
    for other in (root, *ctrls):
        if other is not group and other.cpus & added:
            other.cpus -= added
            for child in other.children.values():
                child.cpus &= other.cpus
    group.cpus = set(new)
    for child in group.children.values():
        child.cpus = set()


# -------------------------------------------------------------- schemata
def first_run(cbm: int) -> int:
    """``cbm_ensure_valid()``: only the lowest run of ones is kept."""
    if cbm == 0:
        return 0
    low = cbm & -cbm
    return cbm & ~(cbm + low)


def initial_schemata(topology: Topology, ctrls: list[Group]) -> dict[int, int]:
    """A new control group's CBMs (``__init_one_rdt_domain()``): the ways
    of shareable groups and unused ones (every way no exclusive group
    holds) and ``shareable_bits``, only their lowest run; ENOSPC with fewer
    than min_cbm_bits."""
    schemata: dict[int, int] = {}
    for cache in topology.l3:
        excl = 0
        for g in ctrls:
            if g.mode == "exclusive":
                excl |= g.schemata.get(cache.id, 0)
        cbm = first_run((topology.cbm_mask & ~excl) | topology.shareable_bits)
        if bin(cbm).count("1") < topology.min_cbm_bits:
            raise SimError(errno.ENOSPC, f"No space on L3:{cache.id}\n")
        schemata[cache.id] = cbm
    return schemata


def parse_schemata(
    topology: Topology, group: Group, data: bytes, ctrls: list[Group] | None = None
) -> dict[int, int]:
    """The L3 CBMs written to a control group's ``schemata``: L3 id -> CBM
    (``rdtgroup_schemata_write()``, ``parse_line()``, ``parse_cbm()``);
    ``ctrls`` are the control groups (the root too) checked for overlaps.
    ``data`` ends with a newline (the model checks that first)."""
    text = data.decode("utf-8", "replace")
    staged: dict[int, int] = {}
    for line in text[:-1].split("\n"):
        head, rest = strsep(line, ":")
        resname = strim(head or "")
        if rest is None:
            raise SimError(errno.EINVAL, "Missing ':'\n")
        if rest == "":
            raise SimError(errno.EINVAL, f"Missing '{resname}' value\n")
        if resname != "L3" or group.closid >= topology.num_closids:
            raise SimError(errno.EINVAL, f"Unknown or unsupported resource name '{resname}'\n")
        _parse_l3(topology, rest, staged, group, ctrls or [])
    return staged


def _parse_l3(
    topology: Topology, line: str, staged: dict[int, int], group: Group, ctrls: list[Group]
) -> None:
    ids = {c.id for c in topology.l3}
    rest: str | None = line
    while rest:
        dom, rest = strsep(rest, ";")
        id_text, mask = strsep(dom, "=")
        dom_id = kstrtoul(id_text, 10)  # the id is not trimmed: "L3: 0=f" fails
        if mask is None or dom_id is None:
            raise SimError(errno.EINVAL, "Missing '=' or non-numeric domain\n")
        if dom_id not in ids:
            raise SimError(errno.EINVAL)  # no last_cmd_status text
        if dom_id in staged:
            raise SimError(errno.EINVAL, f"Duplicate domain {dom_id}\n")
        cbm = parse_cbm(topology, strim(mask))
        if _overlaps(group, ctrls, dom_id, cbm, exclusive_only=True):
            raise SimError(errno.EINVAL, "Overlaps with exclusive group\n")
        if group.mode == "exclusive" and (cbm & topology.shareable_bits or _overlaps(
                group, ctrls, dom_id, cbm, False)):
            raise SimError(errno.EINVAL, "Overlaps with other group\n")
        staged[dom_id] = cbm


def _overlaps(group: Group, ctrls: list[Group], dom_id: int, cbm: int,
              exclusive_only: bool) -> bool:
    """``__rdtgroup_cbm_overlaps()``: does ``cbm`` share a way with another
    control group (only exclusive ones with ``exclusive_only``)?  Without
    ``exclusive_only`` the kernel checks ``shareable_bits`` first: the
    callers do."""
    for other in ctrls:
        if other is group or other.closid == group.closid:
            continue
        if other.schemata.get(dom_id, 0) & cbm and (
                not exclusive_only or other.mode == "exclusive"):
            return True
    return False


def parse_cbm(topo: Topology, text: str) -> int:
    """A cache bit mask, checked as ``cbm_validate()`` does."""
    val = kstrtoul(text, 16)
    if val is None:
        raise SimError(errno.EINVAL, f"Non-hex character in the mask {text}\n")
    if (topo.min_cbm_bits > 0 and val == 0) or val > topo.cbm_mask:
        raise SimError(errno.EINVAL, "Mask out of range\n")
    run = first_run(val)
    if not topo.sparse_masks and run != val:
        raise SimError(errno.EINVAL, f"The mask {val:x} has non-consecutive 1-bits\n")
    if bin(run).count("1") < topo.min_cbm_bits:
        raise SimError(errno.EINVAL, f"Need at least {topo.min_cbm_bits} bits in the mask\n")
    return val


# ------------------------------------------------------- mode, threshold
def parse_mode(topology: Topology, group: Group, data: bytes,
               ctrls: list[Group] | None = None) -> str:
    """The mode written to ``mode`` (``rdtgroup_mode_write()``); ``data``
    ends with a newline.  The same mode again is a no-op; ``exclusive``
    needs a schemata that shares no way with another control group
    (``rdtgroup_mode_test_exclusive()``), the default group included, nor
    with ``shareable_bits`` (on MPAM every way: no group is exclusive)."""
    mode = data.decode("utf-8", "replace")[:-1]
    if mode == group.mode:
        return mode
    if mode == "exclusive":
        for dom_id, cbm in group.schemata.items():
            if cbm & topology.shareable_bits or _overlaps(
                    group, ctrls or [], dom_id, cbm, exclusive_only=False):
                raise SimError(errno.EINVAL, "Schemata overlaps\n")
    elif mode != "shareable":
        raise SimError(errno.EINVAL, "Unknown or unsupported mode\n")
    return mode


def parse_max_threshold(topology: Topology, data: bytes) -> int:
    """Bytes written to max_threshold_occupancy, rounded down to the
    occupancy granularity as the kernel stores it."""
    value = kstrtoint(data.decode("utf-8", "replace").strip())
    limit = max(c.size for c in topology.l3)
    if value is None or value < 0 or value > limit:
        raise SimError(errno.EINVAL)
    gran = topology.occupancy_granularity
    return value // gran * gran
