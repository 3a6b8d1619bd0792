"""Cache bit masks (CBMs) for the guard: the cap mask and the schemata lines
that set it.  Reading a group's ``schemata`` back and the share of the ways
a mask gives are the backend's (:mod:`ceilometer_cmt.backends.resctrl.schemata`,
which the agent's ``cache.allocation.percent`` uses too); they are imported
here under their old names.

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

from ceilometer_cmt.backends.resctrl.schemata import (  # the one parser, below the guard
    L3,
    L3_CDP,
    CacheInfo,
    CbmError,
    Schemata,
    group_share,
    parse_schemata,
    popcount,
    share_percent,
)

__all__ = ["L3", "L3_CDP", "CacheInfo", "CbmError", "Schemata", "cap_mask", "cap_schemata",
           "cap_ways", "first_run", "format_schemata", "group_share", "is_contiguous",
           "parse_schemata", "popcount", "share_percent", "validate"]


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
