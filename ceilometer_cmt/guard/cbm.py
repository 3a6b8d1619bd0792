"""Cache bit masks (CBMs) for the guard: the cap mask, the schemata lines
that set it, reading a group's ``schemata`` back, and the share of the
ways a mask gives.

Kernel facts (doc/kernel-facts-cat.md, from fs/resctrl/ctrlmondata.c and
rdtgroup.c):

* ``info/L3/cbm_mask`` is every way set (``BIT_MASK(cbm_len) - 1``);
  ``cbm_validate()`` wants a mask within it, non-zero when
  ``min_cbm_bits > 0``, contiguous unless ``sparse_masks`` is 1, and its
  first run of ones at least ``min_cbm_bits`` long.
* ``schemata`` lines read ``NAME:id=mask;id=mask``, the name right-aligned
  with spaces, masks in hex (old kernels zero-pad them to the mask's
  width); CDP hosts have ``L3CODE`` and ``L3DATA`` lines instead of ``L3``.
  A write needs a trailing newline and may name only some domains.

Where the cap mask sits.  libvirt's ``virResctrlAllocGetUnused()`` counts as
free only the ways that neither the default group nor any other root
directory's schemata holds, and places ``<cachetune>`` allocations there
(``virResctrlAllocFindUnused()``).  So the cap mask is taken *inside the
default group's mask* of each domain: it takes no way libvirt could use,
and it cannot overlap an exclusive group (those never overlap the default
group).  Within it, the cap takes the lowest ways, avoiding
``shareable_bits`` when it can: those are the ways hardware shares with
other agents such as I/O (Haswell reports ``0xc0000``, the two highest).
A new control group starts with every usable way (``__init_one_rdt_domain``)
so, like any group, it overlaps the cap; that is fine, the cap group is
shareable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: resource name -> domain id -> mask, e.g. {"L3": {0: 0xff, 1: 0xff}}
Schemata = dict[str, dict[int, int]]
#: the L3 schemata names: without CDP, and with it (``-o cdp``)
L3 = "L3"
L3_CDP = ("L3CODE", "L3DATA")


class CbmError(ValueError):
    """No valid mask: the message says why (in an operator's words)."""


@dataclass(frozen=True)
class CacheInfo:
    """``info/L3`` (or ``info/L3DATA`` on a CDP host)."""

    cbm_mask: int
    min_cbm_bits: int = 1
    sparse_masks: bool = False
    shareable_bits: int = 0

    def __post_init__(self) -> None:
        if self.cbm_mask <= 0 or self.cbm_mask & (self.cbm_mask + 1):
            raise CbmError(f"cbm_mask {self.cbm_mask:x} is not a run of ones from bit 0")
        if not 0 <= self.min_cbm_bits <= self.cbm_len:
            raise CbmError(f"min_cbm_bits {self.min_cbm_bits} does not fit cbm_mask "
                           f"{self.cbm_mask:x}")

    @property
    def cbm_len(self) -> int:
        """How many ways the cache has (bits of the CBM)."""
        return self.cbm_mask.bit_length()


def popcount(mask: int) -> int:
    return bin(mask).count("1")


def first_run(mask: int) -> int:
    """Length of the lowest run of ones (0 for 0)."""
    if mask <= 0:
        return 0
    low = mask >> ((mask & -mask).bit_length() - 1)
    return (low ^ (low & (low + 1))).bit_length()


def is_contiguous(mask: int) -> bool:
    return mask > 0 and popcount(mask) == first_run(mask)


def validate(info: CacheInfo, mask: int) -> str | None:
    """Why ``cbm_validate()`` would reject ``mask`` (its last_cmd_status
    text), or None when the kernel takes it."""
    if (info.min_cbm_bits > 0 and mask == 0) or mask < 0 or mask > info.cbm_mask:
        return "Mask out of range\n"
    if not info.sparse_masks and mask and not is_contiguous(mask):
        return f"The mask {mask:x} has non-consecutive 1-bits\n"
    if first_run(mask) < info.min_cbm_bits:
        return f"Need at least {info.min_cbm_bits} bits in the mask\n"
    return None


def cap_ways(info: CacheInfo, share: float) -> int:
    """Ways for ``share`` percent of the cache: rounded half up, at least
    one and ``min_cbm_bits``, at most every way."""
    if not 0 < share <= 100:
        raise CbmError(f"cap share {share} is not a percentage in (0, 100]")
    ways = int(info.cbm_len * share / 100 + 0.5)
    return min(info.cbm_len, max(ways, info.min_cbm_bits, 1))


def cap_mask(info: CacheInfo, share: float, default_mask: int | None = None) -> int:
    """The contiguous mask of ``cap_ways()`` ways inside ``default_mask``
    (the default group's mask in that domain; all ways when None): the
    lowest window that avoids ``shareable_bits``, else the lowest window.
    When the default group holds fewer ways, its longest run is used if it
    still has ``min_cbm_bits``; otherwise :class:`CbmError`."""
    within = info.cbm_mask if default_mask is None else default_mask & info.cbm_mask
    ways = cap_ways(info, share)
    longest = _longest_run(within)
    if longest < ways:
        if longest < max(1, info.min_cbm_bits):
            raise CbmError(f"the default group's mask {within:x} has no run of "
                           f"{max(1, info.min_cbm_bits)} ways to share")
        ways = longest
    window = (1 << ways) - 1
    fits = [window << s for s in range(info.cbm_len - ways + 1)
            if (window << s) & within == window << s]
    clear = [m for m in fits if not m & info.shareable_bits]
    return (clear or fits)[0]


def _longest_run(mask: int) -> int:
    best = 0
    while mask:
        run = first_run(mask)
        best = max(best, run)
        low = (mask & -mask).bit_length() - 1
        mask &= ~(((1 << run) - 1) << low)
    return best


def cap_schemata(info: CacheInfo, share: float, default: Schemata) -> Schemata:
    """The cap group's L3 masks, per schemata name and domain, for a host
    whose default group reads ``default``: ``L3`` lines, or ``L3CODE`` and
    ``L3DATA`` on a CDP host (both capped the same way)."""
    names = [n for n in (L3, *L3_CDP) if n in default]
    if not names:
        raise CbmError("the default group's schemata has no L3 line")
    return {name: {dom: cap_mask(info, share, mask) for dom, mask in default[name].items()}
            for name in names}


def format_schemata(schemata: Schemata) -> str:
    """What to write to a group's ``schemata``: one line per name, domains
    in ascending id, masks in hex; every line ends in a newline (the kernel
    wants the trailing one and rejects empty lines)."""
    lines = []
    for name, doms in schemata.items():
        if not doms:
            continue
        body = ";".join(f"{dom}={mask:x}" for dom, mask in sorted(doms.items()))
        lines.append(f"{name}:{body}\n")
    return "".join(lines)


def parse_schemata(text: str) -> Schemata:
    """The cache lines (``L2``/``L3`` names, CDP ones too) of a group's
    ``schemata`` as the kernel prints it: names may be padded with spaces,
    masks zero-padded or ``0x``-prefixed.  Other resources (``MB``,
    ``SMBA``) and pseudo-locksetup's ``uninitialized`` lines are skipped.
    A malformed cache line raises :class:`CbmError`."""
    out: Schemata = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or not name.startswith(("L2", "L3")) or rest.strip() == "uninitialized":
            continue
        doms: dict[int, int] = {}
        for item in rest.split(";"):
            if not item.strip():
                continue
            dom, eq, value = item.partition("=")
            try:
                if not eq:
                    raise ValueError(item)
                doms[int(dom.strip(), 10)] = int(value.strip(), 16)
            except ValueError:
                raise CbmError(f"bad schemata item {item!r} in {line!r}") from None
        out[name] = doms
    return out


def share_percent(info: CacheInfo, mask: int) -> float:
    """Percent of the ways ``mask`` lets a group fill (the gauge
    ``cache.allocation.percent``)."""
    return 100.0 * popcount(mask & info.cbm_mask) / info.cbm_len


def group_share(info: CacheInfo, schemata: Mapping[str, Mapping[int, int]],
                domain: int) -> float | None:
    """The share of ways a group may fill with data in ``domain``
    (``L3``, or ``L3DATA`` with CDP); None when its schemata does not
    name the domain."""
    for name in (L3, "L3DATA"):
        if name in schemata and domain in schemata[name]:
            return share_percent(info, schemata[name][domain])
    return None
