"""Control groups' ``schemata`` and the share of L3 ways they let a group fill.

The one parser of ``schemata`` text and reader of ``info/L3`` (the guard's
:mod:`ceilometer_cmt.guard.cbm` and :mod:`~ceilometer_cmt.guard.observe` use
them from here), the cache's way count, and :class:`Allocations`: the
agent's ``cache.allocation.percent`` of each instance, from the schemata of
the control groups its threads are in.

Kernel facts (doc/kernel-facts-cat.md; Documentation/filesystems/resctrl.rst
"Cache resource" and "Schemata files"; fs/resctrl/ctrlmondata.c):

* ``info/L3/cbm_mask`` is every way set (``BIT_MASK(cbm_len) - 1``); a CDP
  host (``-o cdp``) has ``info/L3CODE`` and ``info/L3DATA`` instead.
* ``schemata`` lines read ``NAME:id=mask;id=mask``, the name right-aligned
  with spaces, masks in hex (old kernels zero-pad them); CDP hosts have
  ``L3CODE`` and ``L3DATA`` lines instead of ``L3``. A group's threads may
  fill (allocate into) only the ways its mask sets in that domain; data
  fills follow ``L3DATA`` on a CDP host.
* The default group (the root) starts with every way, as does each new
  control group (``__init_one_rdt_domain``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.readings import Allocation

#: resource name -> domain id -> mask, e.g. {"L3": {0: 0xff, 1: 0xff}}
Schemata = dict[str, dict[int, int]]
#: the L3 schemata names: without CDP, and with it (``-o cdp``)
L3 = "L3"
L3_CDP = ("L3CODE", "L3DATA")
#: the names whose masks bound data fills, in the order looked for
DATA_NAMES = (L3, "L3DATA")


class CbmError(ValueError):
    """No valid mask, or a malformed schemata: the message says why (in an
    operator's words)."""


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
    """Percent of the ways ``mask`` lets a group fill."""
    return 100.0 * popcount(mask & info.cbm_mask) / info.cbm_len


def group_share(info: CacheInfo, schemata: Mapping[str, Mapping[int, int]],
                domain: int) -> float | None:
    """The share of ways a group may fill with data in ``domain``
    (``L3``, or ``L3DATA`` with CDP); None when its schemata does not
    name the domain."""
    mask = data_mask(schemata, domain)
    return None if mask is None else share_percent(info, mask)


def data_mask(schemata: Mapping[str, Mapping[int, int]], domain: int) -> int | None:
    """The mask bounding data fills in ``domain`` (``L3``, or ``L3DATA``
    with CDP); None when the schemata does not name the domain."""
    for name in DATA_NAMES:
        masks = schemata.get(name)
        if masks is not None and domain in masks:
            return masks[domain]
    return None


def _l3_info(root: str) -> tuple[str, str] | None:
    """``info/L3`` (``info/L3DATA`` on a CDP host) and the text of its
    ``cbm_mask``; None on a host without L3 CAT."""
    for name in DATA_NAMES:
        base = os.path.join(root, "info", name)
        text = fs.read_text(os.path.join(base, "cbm_mask"))
        if text is not None:
            return base, text
    return None


def read_cbm_mask(root: str) -> CacheInfo | None:
    """The L3's ``cbm_mask`` (``info/L3``, ``info/L3DATA`` on a CDP host) as
    a :class:`CacheInfo`; None on a host without L3 CAT (or a mask that is
    not a run of ones)."""
    found = _l3_info(root)
    if found is None:
        return None
    try:
        return CacheInfo(int(found[1].strip(), 16))
    except ValueError:  # CbmError too
        return None


def read_cache_info(root: str) -> CacheInfo | None:
    """:func:`read_cbm_mask` with what ``cbm_validate()`` checks besides:
    ``min_cbm_bits``, ``sparse_masks`` and ``shareable_bits`` (the guard's
    cap mask needs them; a file missing keeps its default).  None on a host
    without L3 CAT or when a file there is malformed."""
    found = _l3_info(root)
    if found is None:
        return None
    base, mask = found

    def extra(name: str, default: str) -> str:
        return (fs.read_text(os.path.join(base, name)) or default).strip()

    try:
        return CacheInfo(int(mask.strip(), 16), int(extra("min_cbm_bits", "1")),
                         extra("sparse_masks", "0") == "1",
                         int(extra("shareable_bits", "0"), 16))
    except ValueError:  # CbmError too
        return None


def read_schemata(root: str, ctrl: str) -> Schemata | None:
    """Control group ``ctrl``'s parsed ``schemata`` ("" = the default
    group); None when it cannot be read or parsed."""
    text = fs.read_text(os.path.join(fs.ctrl_path(root, ctrl), "schemata"))
    if text is None:
        return None
    try:
        return parse_schemata(text)
    except CbmError:
        return None


def cap_share(prefix: str, ctrl: str) -> int | None:
    """The share a control group of the guard caps to (``<prefix>cap-<share>``,
    as :meth:`ceilometer_cmt.guard.policy.Options.group_name` names them);
    None for any other group."""
    m = re.fullmatch(re.escape(prefix) + r"cap-([1-9][0-9]?|100)", ctrl)
    return int(m.group(1)) if m else None


class Allocations:
    """The share of L3 ways instances may fill, for the resctrl backend.

    Each control group's ``schemata`` is read at most once between two
    :meth:`refresh` calls (the backend refreshes when the group listing
    changed, and every few cycles): one small file per control group.

    An instance's share in a domain is the popcount of the union of the
    masks of the control groups its threads are in (they may fill any of
    those ways), over ``cbm_len``. Its value is the *smallest* share over
    the domains it holds cache in (the most constrained place it runs),
    over every domain its groups name when it holds none; each domain's
    share goes into the metadata. None without CAT, never a made-up 100.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.info = read_cbm_mask(root)
        self._schemata: dict[str, Schemata | None] = {}
        #: control groups (sorted) -> (shares per domain, the allocation when
        #: every domain has the same share: then where it holds cache does not
        #: matter, and every instance there shares one object)
        self._shares: dict[tuple[str, ...],
                           tuple[dict[int, float], Allocation | None] | None] = {}
        #: schemata files read since the start (tests, the benchmark)
        self.reads = 0

    def refresh(self) -> None:
        """Read every control group's schemata again when next asked."""
        self._schemata.clear()
        self._shares.clear()

    def schemata(self, ctrl: str) -> Schemata | None:
        if ctrl not in self._schemata:
            self.reads += 1
            self._schemata[ctrl] = read_schemata(self.root, ctrl)
        return self._schemata[ctrl]

    def shares(self, ctrls: tuple[str, ...]) -> dict[int, float] | None:
        """Domain -> percent of the ways threads in control groups ``ctrls``
        (sorted) may fill; None without CAT or when none of their schemata
        names an L3 domain."""
        found = self._lookup(ctrls)
        return None if found is None else found[0]

    def _lookup(self, ctrls: tuple[str, ...]
                ) -> tuple[dict[int, float], Allocation | None] | None:
        if ctrls in self._shares:
            return self._shares[ctrls]
        out = None
        if self.info is not None:
            masks: dict[int, int] = {}
            for ctrl in ctrls:
                sch = self.schemata(ctrl) or {}
                name = next((n for n in DATA_NAMES if n in sch), None)
                for dom, mask in sch.get(name or "", {}).items():
                    masks[dom] = masks.get(dom, 0) | mask
            info = self.info
            shares = {d: share_percent(info, m) for d, m in sorted(masks.items())}
            if shares:
                values = set(shares.values())
                out = shares, (Allocation(values.pop(), shares) if len(values) == 1 else None)
        self._shares[ctrls] = out
        return out

    def share(self, ctrls: Sequence[str],
              held: Mapping[int, int | None] | Iterable[int]) -> Allocation | None:
        """The allocation of threads in control groups ``ctrls`` that hold
        cache in domains ``held`` (ids, or a reading's occupancy: the domains
        with bytes); see the class doc. Not to be changed: instances share it."""
        found = self._lookup(tuple(ctrls) if len(ctrls) < 2 else tuple(sorted(ctrls)))
        if found is None:
            return None
        shares, whole = found
        if whole is not None:
            return whole
        ids = [d for d, v in held.items() if v] if isinstance(held, Mapping) else held
        where = [shares[d] for d in ids if d in shares]
        return Allocation(min(where or shares.values()), shares)
