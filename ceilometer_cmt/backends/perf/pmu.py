"""Discovery of the ``intel_cqm`` perf PMU from sysfs (Linux 4.1 - 4.13).

``<sysfs>/bus/event_source/devices/intel_cqm/`` (a link to
``/sys/devices/intel_cqm``) holds, as ``arch/x86/events/intel/cqm.c`` (v4.13)
registers them:

* ``type``: the dynamic PMU type id for ``perf_event_attr.type``.
* ``format/event``: ``config:0-7``: how the ``event=`` term maps to bits.
* ``events/llc_occupancy`` = ``event=0x01``, with ``.unit`` ``Bytes``,
  ``.scale`` = the CPU's occupancy scale (CPUID.0xF.1:EBX, bytes per counted
  unit, often 64 or more: it is *not* always 1), ``.per-pkg`` 1 and
  ``.snapshot`` 1 (a gauge, not a running count).
* ``events/total_bytes`` = ``event=0x02`` and ``local_bytes`` = ``event=0x03``
  (MBM, when the CPU has it), ``.unit`` ``MB`` and ``.scale`` ``1e-6``: the
  raw count is already bytes (the kernel multiplied by the occupancy scale),
  ``scale`` only turns it into MB for ``perf stat``.
* A CPU with only CMT lists only llc_occupancy; one with only MBM only the
  two byte counters.

The byte factor of an event is therefore ``scale x unit`` (``Bytes`` = 1,
``MB`` = 10^6, ...): 64 for occupancy on a scale-64 CPU, exactly 1 for MBM.
It is kept as a :class:`fractions.Fraction` so that ``1e-6 x 10^6`` is 1.

Event strings are parsed the way perf parses them: comma-separated terms
``name=value`` (decimal or ``0x`` hex; a bare ``name`` means 1), each mapped
through ``format/<name>`` (``config:0-7``, ``config1:0-3,8``, ...) into
``config``/``config1``/``config2`` bits; ``config=``/``config1=``/``config2=``
terms set the word directly. Nothing here hard-codes a config value.

Since 4.14 the PMU is gone (RMID recycling gave wrong numbers) and resctrl
replaced it; an absent directory is :class:`BackendUnavailable` saying so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TypeVar

from ceilometer_cmt.backends.perf.abi import EventSpec
from ceilometer_cmt.errors import BackendUnavailable
from ceilometer_cmt.linux.files import read_attribute

PMU_NAME = "intel_cqm"
OCCUPANCY_EVENT = "llc_occupancy"
MBM_TOTAL_EVENT = "total_bytes"
MBM_LOCAL_EVENT = "local_bytes"
KNOWN_EVENTS = (OCCUPANCY_EVENT, MBM_TOTAL_EVENT, MBM_LOCAL_EVENT)

T = TypeVar("T")

CONFIG_WORDS = ("config", "config1", "config2")

#: ``.unit`` -> bytes per unit. ``MB`` as cqm.c means it: scale 1e-6 of bytes.
UNIT_BYTES: dict[str, int] = {
    "bytes": 1, "byte": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}

_INT_RE = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BITS_RE = re.compile(r"^(\d+)(?:-(\d+))?$")
#: a decimal in scientific notation; the exponent is bounded because
#: ``Fraction("1e999999999")`` would compute 10**999999999 (minutes, gigabytes).
_SCALE_RE = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?$")


class PmuMalformed(BackendUnavailable):
    """A PMU sysfs file does not say what the kernel would write there."""


# ---------------------------------------------------------------- pure parsers

def parse_int(text: str) -> int:
    t = text.strip()
    if not _INT_RE.match(t):
        raise ValueError(f"not a number: {text!r}")
    return int(t, 0) if t.lower().startswith("0x") else int(t, 10)


def parse_event_terms(text: str) -> list[tuple[str, int]]:
    """``"event=0x01,umask=3,edge"`` -> ``[("event", 1), ("umask", 3), ("edge", 1)]``."""
    body = text.strip()
    if not body:
        raise ValueError("empty event string")
    terms: list[tuple[str, int]] = []
    for part in body.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not _NAME_RE.match(name):
            raise ValueError(f"bad term {part!r} in event string {text!r}")
        if not sep:
            terms.append((name, 1))
            continue
        if value.strip() == "?":
            raise ValueError(f"term {name} of {text!r} needs a parameter; not supported")
        terms.append((name, parse_int(value)))
    return terms


def parse_format(text: str) -> tuple[str, tuple[int, ...]]:
    """``"config:0-7"`` / ``"config1:0-3,8"`` -> (word, bit positions low to high).

    Sorted whatever order the ranges are listed in: perf fills the format's
    bitmap from its lowest bit up (``pmu_format_value``).
    """
    word, sep, spec = text.strip().partition(":")
    if not sep or word not in CONFIG_WORDS or not spec:
        raise ValueError(f"not a perf format: {text!r}")
    bits: list[int] = []
    for part in spec.split(","):
        m = _BITS_RE.match(part.strip())
        if not m:
            raise ValueError(f"not a perf format: {text!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo or hi > 63:
            raise ValueError(f"bad bit range in perf format: {text!r}")
        bits.extend(range(lo, hi + 1))
    if len(set(bits)) != len(bits):
        raise ValueError(f"overlapping bits in perf format: {text!r}")
    return word, tuple(sorted(bits))


def encode_terms(terms: list[tuple[str, int]],
                 formats: dict[str, tuple[str, tuple[int, ...]]] | None) -> dict[str, int]:
    """Place term values into config words the way perf's pmu_format_value does.

    Value bit i goes to the i-th bit (low to high) of the term's format.
    ``formats`` None means the PMU publishes no ``format/`` directory: then
    only ``config*`` terms and ``event`` (taken as the whole ``config``) work.
    """
    words = dict.fromkeys(CONFIG_WORDS, 0)
    for name, value in terms:
        if value < 0 or value >= 1 << 64:
            raise ValueError(f"term {name}={value} out of range")
        if name in CONFIG_WORDS:
            words[name] |= value
            continue
        if formats is None:
            if name == "event":
                words["config"] |= value
                continue
            raise ValueError(f"term {name!r} without a format/ directory")
        if name not in formats:
            raise ValueError(f"term {name!r} has no format/{name}")
        word, bits = formats[name]
        if value >> len(bits):
            raise ValueError(f"term {name}={value:#x} does not fit {len(bits)} bits")
        for i, bit in enumerate(bits):
            if value >> i & 1:
                words[word] |= 1 << bit
    return words


def parse_scale(text: str) -> Fraction:
    """``"64"``, ``"1e-6"``, ``"0.5"`` -> exact Fraction (must be > 0)."""
    if not _SCALE_RE.match(text.strip()):
        raise ValueError(f"not a scale: {text!r}")
    try:
        scale = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a scale: {text!r}") from None
    if scale <= 0:
        raise ValueError(f"not a positive scale: {text!r}")
    return scale


def unit_bytes(unit: str) -> int:
    try:
        return UNIT_BYTES[unit.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown unit {unit!r} (expected Bytes, MB, ...)") from None


# ---------------------------------------------------------------- the PMU

@dataclass(frozen=True)
class PmuEvent:
    """One named event of the PMU, ready for ``perf_event_open``."""

    name: str
    config: int
    config1: int = 0
    config2: int = 0
    scale: Fraction = Fraction(1)
    unit: str = "Bytes"
    per_pkg: bool = False
    snapshot: bool = False

    @property
    def byte_factor(self) -> Fraction:
        """Bytes per raw count: scale x unit."""
        return self.scale * unit_bytes(self.unit)

    def to_bytes(self, raw: int) -> int:
        f = self.byte_factor
        return raw * f.numerator // f.denominator

    def spec(self, pmu_type: int) -> EventSpec:
        return EventSpec(pmu_type, self.config, self.config1, self.config2)


@dataclass(frozen=True)
class CqmPmu:
    type: int
    events: dict[str, PmuEvent] = field(default_factory=dict)
    path: str = ""

    def spec(self, event: str) -> EventSpec:
        return self.events[event].spec(self.type)


def pmu_dir(sysfs_root: str, name: str = PMU_NAME) -> str:
    return os.path.join(sysfs_root, "bus", "event_source", "devices", name)


def _read_optional(path: str) -> str | None:
    try:
        return read_attribute(path)
    except FileNotFoundError:
        return None


def read_formats(base: str) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    fdir = os.path.join(base, "format")
    try:
        names = sorted(os.listdir(fdir))
    except FileNotFoundError:
        return None
    formats = {}
    for name in names:
        path = os.path.join(fdir, name)
        try:
            formats[name] = parse_format(read_attribute(path))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise PmuMalformed(f"{path}: {e}") from e
    return formats


def _parse_file(path: str, parse: Callable[[str], T]) -> T | None:
    """``parse`` of the file's text, None when absent; errors name the file."""
    try:
        text = _read_optional(path)
        return None if text is None else parse(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PmuMalformed(f"{path}: {e}") from e


def read_event(base: str, name: str,
               formats: dict[str, tuple[str, tuple[int, ...]]] | None) -> PmuEvent | None:
    """The event ``name`` from ``<base>/events/``; None when not listed."""
    path = os.path.join(base, "events", name)
    words = _parse_file(path, lambda t: encode_terms(parse_event_terms(t), formats))
    if words is None:
        return None
    scale = _parse_file(path + ".scale", parse_scale)
    unit = _parse_file(path + ".unit", lambda t: t)
    per_pkg = _parse_file(path + ".per-pkg", parse_int)
    snapshot = _parse_file(path + ".snapshot", parse_int)
    return PmuEvent(name, words["config"], words["config1"], words["config2"],
                    Fraction(1) if scale is None else scale,
                    "Bytes" if unit is None else unit, bool(per_pkg), bool(snapshot))


def discover(sysfs_root: str, name: str = PMU_NAME,
             event_names: tuple[str, ...] = KNOWN_EVENTS) -> CqmPmu:
    """Read the PMU; raise BackendUnavailable (absent) or PmuMalformed."""
    base = pmu_dir(sysfs_root, name)
    if not os.path.isdir(base):
        raise BackendUnavailable(
            f"perf PMU {name} not found ({base} is absent): the intel_cqm perf "
            "interface was removed in Linux 4.14; use the resctrl backend "
            "(mount -t resctrl resctrl /sys/fs/resctrl) instead")
    type_path = os.path.join(base, "type")
    try:
        pmu_type = parse_int(read_attribute(type_path))
    except FileNotFoundError as e:
        raise PmuMalformed(f"{type_path} is missing") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PmuMalformed(f"{type_path}: {e}") from e
    if pmu_type >= 1 << 32:
        raise PmuMalformed(f"{type_path}: PMU type {pmu_type} out of range")
    formats = read_formats(base)
    events = {}
    for ev in event_names:
        found = read_event(base, ev, formats)
        if found is None:
            continue
        try:
            unit_bytes(found.unit)  # every intel_cqm event counts bytes
        except ValueError as e:
            raise PmuMalformed(f"{base}/events/{ev}.unit: {e}") from e
        if found.byte_factor < 1:  # small raw counts would floor to 0 bytes
            raise PmuMalformed(f"{base}/events/{ev}.scale: {found.scale} {found.unit} is less "
                               "than a byte per count")
        events[ev] = found
    if not events:
        raise PmuMalformed(f"{base}/events lists none of {', '.join(event_names)}")
    return CqmPmu(pmu_type, events, base)
