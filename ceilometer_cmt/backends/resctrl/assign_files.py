"""The files of MBM counter assignment (Linux 6.18, AMD ABMC, ``mbm_event`` mode).

``info/L3_MON/{mbm_assign_mode,num_mbm_cntrs,available_mbm_cntrs,
mbm_assign_on_mkdir}``, ``info/L3_MON/event_configs/<event>/event_filter``,
each group's ``mbm_L3_assignments`` and, on older AMD, BMEC's
``info/L3_MON/mbm_{total,local}_bytes_config``: parsers, readers and the
line format of an assignment write. The readers return ``None`` where the
kernel gives nothing (no file, or EINVAL outside the mode that shows it) and
follow the show functions of ``fs/resctrl/monitor.c`` and
``fs/resctrl/rdtgroup.c`` cited in each docstring (see
doc/kernel-facts-mbm-assign-and-aet.md). Writes go through
:class:`~ceilometer_cmt.backends.resctrl.fs.ResctrlOps`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ceilometer_cmt.backends.resctrl.fs import ASSIGNMENTS_FILE, MBM_EVENTS, read_text

#: ``mbm_assign_mode`` names (``resctrl_mbm_assign_mode_show()``)
MODE_MBM_EVENT = "mbm_event"
MODE_DEFAULT = "default"
#: ``*`` as the domain of an assignment line: every domain
#: (``resctrl_process_assign()``, fs/resctrl/monitor.c)
ALL_DOMAINS = "*"
#: a group's assignments: event -> {domain id: counter assigned}
Assignments = dict[str, dict[int, bool]]

_MODE_LINE_RE = re.compile(r"(\[)?([a-z_]{1,32})(\])?", re.ASCII)
_DEC_RE = re.compile(r"[0-9]{1,10}", re.ASCII)
_HEX_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]{1,16})", re.ASCII)
_WORD_RE = re.compile(r"[a-z_]{1,64}", re.ASCII)


@dataclass(frozen=True)
class AssignMode:
    """``info/L3_MON/mbm_assign_mode``: the current mode (the bracketed line)
    and every mode listed, in the file's order. ``resctrl_mbm_assign_mode_show()``
    (fs/resctrl/monitor.c) prints ``[mbm_event]``/``[default]`` first, then the
    other mode unless the kernel has ``CONFIG_RESCTRL_ASSIGN_FIXED``; without
    assignable counters only ``[default]``."""

    current: str
    modes: tuple[str, ...]

    @property
    def mbm_event(self) -> bool:
        """Counters are assigned per group and event (else ``default``: the
        hardware counts every RMID, or picks which itself)."""
        return self.current == MODE_MBM_EVENT


@dataclass(frozen=True)
class CounterInfo:
    """What ``info/L3_MON`` says about assignable MBM counters, each ``None``
    when the kernel gives nothing: ``num_mbm_cntrs`` and
    ``available_mbm_cntrs`` per domain (``resctrl_num_mbm_cntrs_show()``,
    ``resctrl_available_mbm_cntrs_show()``; the latter and
    ``mbm_assign_on_mkdir`` fail with EINVAL outside ``mbm_event`` mode)."""

    mode: AssignMode | None
    num_cntrs: dict[int, int] | None
    available: dict[int, int] | None
    on_mkdir: bool | None

    @property
    def assigning(self) -> bool:
        """Counters must be assigned now: ``mbm_event`` mode, budgets readable."""
        return self.mode is not None and self.mode.mbm_event and self.available is not None


def parse_assign_mode(text: str | None) -> AssignMode | None:
    """The text of ``mbm_assign_mode`` -> :class:`AssignMode`; None when it
    is missing or not one bracketed mode among plain ones."""
    if text is None:
        return None
    current, modes = None, []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        m = _MODE_LINE_RE.fullmatch(line)
        if m is None or bool(m.group(1)) != bool(m.group(3)):
            return None
        if m.group(1):
            if current is not None:
                return None
            current = m.group(2)
        modes.append(m.group(2))
    if current is None or len(set(modes)) != len(modes):
        return None
    return AssignMode(current, tuple(modes))


def parse_domain_values(text: str | None, *, hexadecimal: bool = False) -> dict[int, int] | None:
    """``0=32;1=32`` (``"%d=%d"`` per domain joined by ``;``, then a newline:
    ``num_mbm_cntrs``, ``available_mbm_cntrs``) or with ``hexadecimal``
    ``0=0x7f;1=0x15`` (``"%d=0x%02x"``: BMEC ``mbm_config_show()``,
    fs/resctrl/rdtgroup.c) -> {domain: value}. None when missing or
    malformed (a bad item, a repeated domain); an empty line is no domains."""
    if text is None:
        return None
    body = text.strip()
    out: dict[int, int] = {}
    if not body:
        return out
    for item in body.split(";"):
        dom, sep, value = item.partition("=")
        if not sep or not _DEC_RE.fullmatch(dom):
            return None
        m = (_HEX_RE if hexadecimal else _DEC_RE).fullmatch(value)
        if m is None or int(dom) in out:
            return None
        out[int(dom)] = int(m.group(1), 16) if hexadecimal else int(value)
    return out


def parse_bool_flag(text: str | None) -> bool | None:
    """``0``/``1`` (``"%u\\n"``, ``resctrl_mbm_assign_on_mkdir_show()``) -> bool."""
    body = text.strip() if text is not None else None
    return {"0": False, "1": True}.get(body) if body is not None else None


def parse_event_filter(text: str | None) -> tuple[str, ...] | None:
    """``local_reads,remote_reads`` (``event_filter_show()``, fs/resctrl/monitor.c:
    the names of ``mbm_transactions[]`` that are set, comma-joined, then a
    newline) -> the names in file order; () when none is set."""
    if text is None:
        return None
    body = text.strip()
    if not body:
        return ()
    names = tuple(body.split(","))
    if not all(_WORD_RE.fullmatch(n) for n in names) or len(set(names)) != len(names):
        return None
    return names


def parse_assignments(text: str | None) -> Assignments | None:
    """A group's ``mbm_L3_assignments`` (``mbm_L3_assignments_show()``,
    fs/resctrl/monitor.c: per MBM event ``<event>:`` then ``<dom>=e`` (a
    counter) or ``<dom>=_`` (none) joined by ``;``, one line each) ->
    {event: {domain: assigned}}; None when missing or malformed."""
    if text is None:
        return None
    out: Assignments = {}
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        event, sep, rest = line.partition(":")
        if not sep or not _WORD_RE.fullmatch(event) or event in out:
            return None
        states: dict[int, bool] = {}
        for item in rest.split(";") if rest else []:
            dom, sep, state = item.partition("=")
            if not sep or not _DEC_RE.fullmatch(dom) or state not in ("e", "_") \
                    or int(dom) in states:
                return None
            states[int(dom)] = state == "e"
        out[event] = states
    return out


def format_assignment(event: str, states: Mapping[int, bool] | bool) -> str:
    """One line for ``mbm_L3_assignments`` (``mbm_L3_assignments_write()``
    needs the trailing newline): ``mbm_total_bytes:0=e;1=_\\n`` for
    {0: True, 1: False}, or ``mbm_total_bytes:*=e\\n`` for ``True`` (every
    domain; the kernel stops at the first domain it has no counter for).
    ValueError for an event other than the two MBM events, no domain, or a
    domain id that is not a non-negative int."""
    if event not in MBM_EVENTS:
        raise ValueError(f"not an MBM event: {event!r}")
    if isinstance(states, bool):
        return f"{event}:{ALL_DOMAINS}={'e' if states else '_'}\n"
    if not states:
        raise ValueError(f"no domain to assign {event} in")
    items = []
    for dom in sorted(states):
        if isinstance(dom, bool) or not isinstance(dom, int) or dom < 0:
            raise ValueError(f"not a domain id: {dom!r}")
        items.append(f"{dom}={'e' if states[dom] else '_'}")
    return f"{event}:" + ";".join(items) + "\n"


def read_assign_mode(root: str) -> AssignMode | None:
    """``info/L3_MON/mbm_assign_mode``; None on kernels before 6.18."""
    return parse_assign_mode(read_text(os.path.join(root, "info", "L3_MON", "mbm_assign_mode")))


def read_num_mbm_cntrs(root: str) -> dict[int, int] | None:
    """``info/L3_MON/num_mbm_cntrs``: counters per domain (any mode); None
    when the hardware has no assignable counters (the file is not made)."""
    return parse_domain_values(read_text(os.path.join(root, "info", "L3_MON", "num_mbm_cntrs")))


def read_available_mbm_cntrs(root: str) -> dict[int, int] | None:
    """``info/L3_MON/available_mbm_cntrs``: free counters per domain; None
    when absent or outside ``mbm_event`` mode (EINVAL)."""
    return parse_domain_values(
        read_text(os.path.join(root, "info", "L3_MON", "available_mbm_cntrs")))


def read_assign_on_mkdir(root: str) -> bool | None:
    """``info/L3_MON/mbm_assign_on_mkdir``: whether mkdir assigns counters
    itself (``rdtgroup_assign_cntrs()``); None when absent or EINVAL."""
    return parse_bool_flag(read_text(os.path.join(root, "info", "L3_MON", "mbm_assign_on_mkdir")))


def read_counter_info(root: str) -> CounterInfo:
    """All of ``info/L3_MON``'s counter-assignment files in one value."""
    return CounterInfo(read_assign_mode(root), read_num_mbm_cntrs(root),
                       read_available_mbm_cntrs(root), read_assign_on_mkdir(root))


def read_event_filter(root: str, event: str) -> tuple[str, ...] | None:
    """``info/L3_MON/event_configs/<event>/event_filter``: the memory
    transactions ``event`` counts in ``mbm_event`` mode; None when absent or EINVAL."""
    if not _WORD_RE.fullmatch(event):
        return None
    return parse_event_filter(read_text(
        os.path.join(root, "info", "L3_MON", "event_configs", event, "event_filter")))


def read_bmec_config(root: str, event: str) -> dict[int, int] | None:
    """BMEC ``info/L3_MON/<event>_config`` (``mbm_total_bytes_config``,
    ``mbm_local_bytes_config``): the transaction mask per domain (defaults
    0x7f total, 0x15 local); None when absent (no BMEC, or hidden in
    ``mbm_event`` mode by ``resctrl_bmec_files_show()``)."""
    if event not in MBM_EVENTS:
        return None
    return parse_domain_values(
        read_text(os.path.join(root, "info", "L3_MON", f"{event}_config")), hexadecimal=True)


def read_assignments(group_path: str) -> Assignments | None:
    """A group's ``mbm_L3_assignments``; None when absent or EINVAL
    (``default`` mode)."""
    return parse_assignments(read_text(os.path.join(group_path, ASSIGNMENTS_FILE)))


def read_mbm_config(root: str) -> dict[str, str] | None:
    """What decides what the MBM counters count, as text for sample
    metadata: ``mode`` (``mbm_assign_mode``'s current one), and per MBM
    event its ``event_filter`` (``mbm_event`` mode) or its BMEC
    ``<event>_config`` masks per domain (``0=0x7f;1=0x7f``); None on a host
    with none of them (nothing to tell, nothing that can change). Writing
    any of them restarts the counters (``event_filter_write()``,
    ``resctrl_mbm_assign_mode_write()``, ``mbm_config_write_domain()``)."""
    out: dict[str, str] = {}
    mode = read_assign_mode(root)
    if mode is not None:
        out["mode"] = mode.current
    for event in MBM_EVENTS:
        names = read_event_filter(root, event)
        if names is not None:
            out[event] = ",".join(names)
            continue
        masks = read_bmec_config(root, event)
        if masks is not None:
            out[event] = ";".join(f"{d}=0x{m:02x}" for d, m in sorted(masks.items()))
    return out or None
