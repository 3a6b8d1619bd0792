"""The rules the privileged daemon applies to the guard's CAT requests.

The guard (``ceilometer-cmt guard``) caps a noisy instance's
share of L3 with a control group of its own. The daemon makes those writes
for it and judges each request by its own config and what it reads under
its own resctrl root, never by the client's word:

- control groups (rule ``cap-groups``): only ``<prefix>cap-<1..100>``, the
  names :meth:`ceilometer_cmt.guard.policy.Options.share_of_group` calls the
  guard's (``fullmatch``); never the default group, ``info``, a path, or a
  group of libvirt's ``<cachetune>`` or any other tool;
- ``schemata`` lines (rule ``schemata``, EINVAL as the kernel answers):
  one cache line per write, parsed by the daemon, which writes its own
  canonical text (``L3:0=f;1=f``), never the client's: only ``L3``,
  ``L3CODE`` or ``L3DATA`` (no ``MB``, no ``L2``) and only a name this
  host's default group has; only its domain ids, each once; each mask as
  ``cbm_validate()`` (fs/resctrl/ctrlmondata.c) takes it (within
  ``cbm_mask``, contiguous unless ``sparse_masks``, at least
  ``min_cbm_bits``: :func:`ceilometer_cmt.guard.cbm.validate`, with the
  kernel's texts) and inside the default group's mask of that domain, so a
  cap never takes a way libvirt's ``virResctrlAllocGetUnused()`` counts as
  free;
- CLOSIDs (rule ``closid-reserve``, ENOSPC): no cap group that would leave
  fewer free CLOSIDs than ``[cmt_privsep] closid_reserve`` (default half of
  ``num_closids``, as the guard's policy keeps);
- threads (rule ``cap-threads``): beside :class:`~ceilometer_cmt.privsep.rules.QemuRule`
  (threads of the named guest's qemu only), a thread may move into a cap
  group only from the default group or a cap group, and back to the
  default group only from a cap group: a thread in another tool's control
  group (libvirt ``<cachetune>``) keeps its allocation.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping

from ceilometer_cmt.guard import cbm
from ceilometer_cmt.guard.policy import Options
from ceilometer_cmt.privsep.rules import refuse

RULE_GROUPS = "cap-groups"
RULE_SCHEMATA = "schemata"
RULE_CLOSIDS = "closid-reserve"
RULE_THREADS = "cap-threads"
#: the schemata names a cap group may be given: L3 cache allocation only
CACHE_NAMES = (cbm.L3, *cbm.L3_CDP)
#: longest schemata line taken, newline not counted: 256 domains ``;<id>=<mask>``
MAX_LINE = 8192
#: most lines one request may carry (L3CODE and L3DATA on a CDP host)
MAX_LINES = 4
_DOMAIN_RE = re.compile(r"[0-9]{1,5}", re.ASCII)
_MASK_RE = re.compile(r"(?:0[xX])?[0-9a-fA-F]{1,16}", re.ASCII)


def check_cap_group(name: object, prefix: str) -> str:
    """A cap group of this daemon's guard: ``<prefix>cap-<1..100>``, nothing else."""
    if not isinstance(name, str):
        raise refuse(RULE_GROUPS, f"a control group name must be a string, not "
                                  f"{type(name).__name__}")
    try:
        ours = Options(prefix=prefix).share_of_group(name) is not None
    except ValueError:
        ours = False  # a prefix the guard could not use: nothing is ours
    if not ours:
        raise refuse(RULE_GROUPS, f"{name[:80]!r} is not one of the guard's cap groups "
                                  f"({prefix}cap-<1..100>); other control groups, the "
                                  "default group among them, are never made, removed "
                                  "or written")
    return name


def _bad(detail: str) -> OSError:
    return refuse(RULE_SCHEMATA, detail, err=errno.EINVAL)


def check_schemata_lines(lines: object, infos: Mapping[str, cbm.CacheInfo],
                         default: cbm.Schemata) -> list[str]:
    """The daemon's own text for each of ``lines``: one cache line each,
    checked against ``infos`` (``info/<name>`` of each cache schemata name
    this host has) and ``default`` (the default group's masks)."""
    if not isinstance(lines, (list, tuple)) or not 0 < len(lines) <= MAX_LINES:
        raise _bad(f"schemata lines must be a list of 1 to {MAX_LINES} lines")
    return [check_schemata_line(line, infos, default) for line in lines]


def check_schemata_line(line: object, infos: Mapping[str, cbm.CacheInfo],
                        default: cbm.Schemata) -> str:
    if not isinstance(line, str):
        raise _bad(f"a schemata line must be a string, not {type(line).__name__}")
    if len(line) > MAX_LINE + 1:
        raise _bad(f"a schemata line of {len(line)} characters (at most {MAX_LINE})")
    body = line[:-1] if line.endswith("\n") else line
    if "\n" in body or "\r" in body:
        raise _bad("one schemata line per write: this one holds several")
    if not body.isascii() or not body.isprintable():
        raise _bad(f"a schemata line with NUL or other unprintable characters: {body[:80]!r}")
    name, sep, rest = body.partition(":")
    name = name.strip()
    if not sep:
        raise _bad(f"not a schemata line (no ':'): {body[:80]!r}")
    if name not in CACHE_NAMES:
        raise _bad(f"only L3 cache allocation ({', '.join(CACHE_NAMES)}) is written, not "
                   f"{name[:16]!r}")
    if name not in infos or name not in default:
        raise _bad(f"this host has no {name} schemata (CDP is "
                   f"{'on' if cbm.L3_CDP[0] in default else 'off'})")
    items = rest.split(";")
    if items and not items[-1].strip():
        items.pop()  # the kernel takes a trailing ';'
    if not items:
        raise _bad(f"a schemata line without a domain: {body[:80]!r}")
    masks: dict[int, int] = {}
    for item in items:
        dom_text, eq, value = item.partition("=")
        if not eq or not _DOMAIN_RE.fullmatch(dom_text) or not _MASK_RE.fullmatch(value.strip()):
            raise _bad(f"not '<domain id>=<hex mask>': {item[:40]!r}")
        dom, mask = int(dom_text), int(value.strip(), 16)
        if dom not in default[name]:
            raise _bad(f"unknown {name} domain {dom} (this host has "
                       f"{sorted(default[name])})")
        if dom in masks:
            raise _bad(f"Duplicate domain {dom}")
        why = cbm.validate(infos[name], mask)
        if why is not None:
            raise _bad(f"{name} domain {dom}: {why.strip()}")
        outside = mask & ~default[name][dom]
        if outside:
            raise _bad(f"{name} domain {dom}: mask {mask:x} takes ways {outside:x} the "
                       f"default group does not hold ({default[name][dom]:x}): those are "
                       "kept for libvirt <cachetune>")
        masks[dom] = mask
    return cbm.format_schemata({name: masks})


def closid_reserve(option: int, num_closids: int) -> int:
    """CLOSIDs kept free: the option, or (-1) half of ``num_closids`` as the
    guard's policy keeps (:meth:`Options.reserve`)."""
    return Options(closid_reserve=None if option < 0 else option).reserve(num_closids)


def check_closids(num_closids: int, in_use: int, option: int) -> None:
    """Refuse (ENOSPC) a control group that would leave fewer than the
    reserve free; ``in_use``: control groups besides the default one."""
    reserve = closid_reserve(option, num_closids)
    free = num_closids - 1 - in_use
    if free - 1 < reserve:
        raise refuse(RULE_CLOSIDS, f"no control group made: {in_use} of {num_closids - 1} "
                                   f"CLOSIDs are in use and {reserve} are kept free for "
                                   "libvirt <cachetune> ([cmt_privsep] closid_reserve)",
                     err=errno.ENOSPC)


def check_origins(tids: list[int], members: Mapping[str, set[int]], prefix: str) -> set[int]:
    """The threads of ``tids`` in the default group (in no control group of
    ``members``, control group -> its tasks); refused when one sits in a
    control group that is not the guard's. So a move, into a cap group or
    back to the default group, only ever takes a thread out of the default
    group or a cap group."""
    opts = Options(prefix=prefix) if prefix else None
    where = {t: g for g, ts in members.items() for t in ts}
    foreign = sorted(t for t in tids if t in where
                     and (opts is None or opts.share_of_group(where[t]) is None))
    if foreign:
        groups = sorted({where[t] for t in foreign})
        raise refuse(RULE_THREADS, f"thread(s) {foreign[:8]} sit in control group(s) "
                                   f"{groups[:4]}, not the guard's: they keep their "
                                   "allocation")
    return {t for t in tids if t not in where}
