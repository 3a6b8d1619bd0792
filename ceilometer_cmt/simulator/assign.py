"""MBM counter assignment: the ``mbm_event`` mode of Linux 6.18 (AMD ABMC).

Follows ``fs/resctrl/monitor.c`` ([MON]) and the x86 side
``arch/x86/kernel/cpu/resctrl/monitor.c`` ([XMON]):

* ``info/L3_MON/mbm_assign_mode``: ``resctrl_mbm_assign_mode_show()`` /
  ``_write()``; a switch frees every counter, resets every MBM count and the
  event filters, and turning ``mbm_event`` on sets ``mbm_assign_on_mkdir``
  back to 1;
* ``num_mbm_cntrs``, ``available_mbm_cntrs``: ``resctrl_num_mbm_cntrs_show()``,
  ``resctrl_available_mbm_cntrs_show()`` (``0=32;1=32``);
* ``mbm_assign_on_mkdir``: ``resctrl_mbm_assign_on_mkdir_show()`` / ``_write()``;
* ``event_configs/<event>/event_filter``: ``event_filter_show()`` /
  ``event_filter_write()`` (``resctrl_parse_mem_transactions()``); a change
  reprograms, and so resets, every counter of that event
  (``resctrl_update_cntr_allrdtgrp()``);
* per group ``mbm_L3_assignments``: ``mbm_L3_assignments_show()`` /
  ``_write()`` (``resctrl_process_assign()``,
  ``rdtgroup_modify_assign_state()``);
* counters: ``mbm_cntr_alloc()`` takes the lowest free one of the domain;
  ``rdtgroup_alloc_assign_cntr()`` does nothing for an event that has one
  already and resets the count of a new one ("The hardware counter is reset
  (because cfg_en == 1)", [XMON] ``resctrl_arch_config_cntr()``);
  ``rdtgroup_assign_cntrs()`` on mkdir (total, then local, each over every
  domain, stopping at the first domain without a counter; mkdir itself never
  fails); ``rdtgroup_unassign_cntrs()`` on rmdir;
* reads: an MBM event without a counter is ``Unassigned``
  (``__l3_mon_event_count()`` sets -ENOENT; ``rdtgroup_mondata_show()``).

A host with ``assign_fixed`` (arm64 MPAM, ``mpam_resctrl_monitor_init_abmc()``
sets ``mbm_cntr_assign_fixed`` and clears ``mbm_cntr_configurable``) follows
the Linux 7.2 functions of [FSMON] (doc/kernel-facts-mpam.md): the mode file
shows only ``[mbm_event]`` and refuses ``default`` ("Counter assignment mode
is not configurable"), ``event_filter`` is 0444 and a write fails with EPERM
("event_filter is not configurable"), and an assignment to every domain
carries on past a domain without a counter, failing with the last error.

Errors go to last_cmd_status through ``puts`` (several lines for one write,
as ``rdt_last_cmd_printf()`` appends) and leave as :class:`.errors.SimError`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable

from ceilometer_cmt.simulator.bmec import CFG_MASK, DEFAULTS, Bmec
from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Group
from ceilometer_cmt.simulator.kstr import kstrtoul, strim, strsep
from ceilometer_cmt.simulator.topology import Topology

#: ``mbm_transactions[]``: name and bit, in print order
TRANSACTIONS = (
    ("local_reads", 0x01),
    ("remote_reads", 0x02),
    ("local_non_temporal_writes", 0x04),
    ("remote_non_temporal_writes", 0x08),
    ("local_reads_slow_memory", 0x10),
    ("remote_reads_slow_memory", 0x20),
    ("dirty_victim_writes_all", 0x40),
)
NOT_ENABLED = "mbm_event counter assignment mode is not enabled\n"

Slot = tuple[Group, str] | None


class CounterAssign:
    """The assignable counters of every L3 monitoring domain, and the files
    that show and change them."""

    def __init__(self, topology: Topology, bmec: Bmec, puts: Callable[[str], None]) -> None:
        self.assignable = topology.num_mbm_cntrs > 0
        self.num_cntrs = topology.num_mbm_cntrs
        self.domains = [d.id for d in topology.mon_domains]
        self.events = tuple(e for e in DEFAULTS if e in topology.mon_features)
        #: ABMC hardware boots in mbm_event mode ([XMON] rdt_get_l3_mon_config())
        self.enabled = self.assignable
        self.on_mkdir = True
        self.evt_cfg = {e: DEFAULTS[e] & CFG_MASK for e in self.events}
        self.slots: dict[int, list[Slot]] = {d: [None] * self.num_cntrs for d in self.domains}
        self.mode_file = topology.assign_mode_file
        self.fixed = topology.assign_fixed
        self.bmec = bmec
        self._puts = puts

    # ---------------------------------------------------------- counters
    def cntr_get(self, group: Group, event: str, dom: int) -> int:
        """``mbm_cntr_get()``: the counter id, or -1."""
        for i, slot in enumerate(self.slots[dom]):
            if slot is not None and slot[0] is group and slot[1] == event:
                return i
        return -1

    def _alloc_assign(self, group: Group, event: str, dom: int) -> None:
        """``rdtgroup_alloc_assign_cntr()``."""
        if self.cntr_get(group, event, dom) >= 0:
            return  # "No action required if the counter is assigned already."
        slots = self.slots[dom]
        if None not in slots:
            self._puts(f"Failed to allocate counter for {event} in domain {dom}\n")
            raise SimError(errno.ENOSPC)
        slots[slots.index(None)] = (group, event)
        _reset(group, event, dom)

    def _unassign(self, group: Group, event: str, dom: int) -> None:
        """``rdtgroup_free_unassign_cntr()``: the counter is freed and the
        group's count of it reset."""
        i = self.cntr_get(group, event, dom)
        if i >= 0:
            self.slots[dom][i] = None
            _reset(group, event, dom)

    def assign_event(self, group: Group, event: str, dom: int | None) -> None:
        """``rdtgroup_assign_cntr_event()``: every domain (``None``) stops at
        the first failure, leaving the event partly assigned (Linux 7.2:
        carries on and fails with the last error)."""
        failed: SimError | None = None
        for d in self.domains if dom is None else [dom]:
            try:
                self._alloc_assign(group, event, d)
            except SimError as e:
                if not self.fixed:
                    raise
                failed = e
        if failed is not None:
            raise failed

    def assign_on_mkdir(self, group: Group) -> None:
        """``rdtgroup_assign_cntrs()``: failures only leave their status line."""
        self.bmec.mkdir(group)
        if not self.enabled or not self.on_mkdir:
            return
        for event in self.events:
            try:
                self.assign_event(group, event, None)
            except SimError:
                pass

    def release(self, group: Group) -> None:
        """``rdtgroup_unassign_cntrs()`` of a removed group."""
        for slots in self.slots.values():
            for i, slot in enumerate(slots):
                if slot is not None and slot[0] is group:
                    slots[i] = None

    def word(self, group: Group, event: str, dom: int) -> str | None:
        """What a read of ``event`` says instead of a number, or None."""
        if self.enabled and event in self.events and self.cntr_get(group, event, dom) < 0:
            return "Unassigned"
        return self.bmec.word(group.rmid, event, dom)

    def available(self, dom: int) -> int:
        return self.slots[dom].count(None)

    # ------------------------------------------------------------- files
    def _check_enabled(self, text: str = NOT_ENABLED) -> None:
        if not self.enabled:
            raise SimError(errno.EINVAL, text)

    def mode_text(self) -> str:
        """``resctrl_mbm_assign_mode_show()``: the current mode in brackets,
        then the other one when counters are assignable."""
        if not self.assignable:
            return "[default]\n"
        text = "[mbm_event]\ndefault\n" if self.enabled else "[default]\nmbm_event\n"
        return text.split("\n")[0] + "\n" if self.fixed else text

    def write_mode(self, data: bytes, groups: Iterable[Group]) -> None:
        """``resctrl_mbm_assign_mode_write()``; ``data`` ends with a newline."""
        text = data[:-1].decode("utf-8", "surrogateescape")
        if text == "default":
            enable = False
        elif text == "mbm_event":
            if not self.assignable:
                raise SimError(errno.EINVAL, "mbm_event mode is not supported\n")
            enable = True
        else:
            raise SimError(errno.EINVAL, "Unsupported assign mode\n")
        if enable == self.enabled:
            return
        if self.fixed:
            raise SimError(errno.EINVAL, "Counter assignment mode is not configurable\n")
        self.enabled = enable
        self.evt_cfg = {e: DEFAULTS[e] & CFG_MASK for e in self.events}
        if enable:
            self.on_mkdir = True
        # mbm_cntr_free_all() and resctrl_reset_rmid_all() in every domain
        self.slots = {d: [None] * self.num_cntrs for d in self.domains}
        self.bmec.pending.clear()
        for group in groups:
            for event in self.events:
                for d in self.domains:
                    _reset(group, event, d)

    def num_cntrs_text(self) -> str:
        return ";".join(f"{d}={self.num_cntrs}" for d in self.domains) + "\n"

    def available_text(self) -> str:
        self._check_enabled()
        return ";".join(f"{d}={self.available(d)}" for d in self.domains) + "\n"

    def on_mkdir_text(self) -> str:
        self._check_enabled()
        return f"{int(self.on_mkdir)}\n"

    def write_on_mkdir(self, value: bool) -> None:
        """``resctrl_mbm_assign_on_mkdir_write()`` after its ``kstrtobool()``."""
        self._check_enabled()
        self.on_mkdir = value

    def filter_text(self, event: str) -> str:
        self._check_enabled()
        cfg = self.evt_cfg[event]
        return ",".join(name for name, bit in TRANSACTIONS if cfg & bit) + "\n"

    def write_filter(self, event: str, data: bytes, groups: Iterable[Group]) -> None:
        """``event_filter_write()``; ``data`` ends with a newline."""
        self._check_enabled()
        if self.fixed:
            raise SimError(errno.EPERM, "event_filter is not configurable\n")
        tok: str | None = data[:-1].decode("utf-8", "surrogateescape")
        cfg = 0
        names = dict(TRANSACTIONS)
        while tok:
            item, tok = strsep(tok, ",")
            name = strim(item or "")
            if name not in names:
                raise SimError(errno.EINVAL, f"Invalid memory transaction type {name}\n")
            cfg |= names[name]
        if cfg == self.evt_cfg[event]:
            return
        self.evt_cfg[event] = cfg
        for group in groups:  # resctrl_update_cntr_allrdtgrp()
            for d in self.domains:
                if self.cntr_get(group, event, d) >= 0:
                    _reset(group, event, d)

    def assignments_text(self, group: Group) -> str:
        """``mbm_L3_assignments_show()``: ``mbm_total_bytes:0=e;1=_``."""
        self._check_enabled()
        lines = []
        for event in self.events:
            states = (
                f"{d}={'e' if self.cntr_get(group, event, d) >= 0 else '_'}"
                for d in self.domains
            )
            lines.append(f"{event}:" + ";".join(states) + "\n")
        return "".join(lines)

    def write_assignments(self, group: Group, data: bytes) -> None:
        """``mbm_L3_assignments_write()``: lines of
        ``<event>:<dom>=<e|_>[;...]``; stops at the first failing line (the
        lines before it stay applied)."""
        self._check_enabled("mbm_event mode is not enabled\n")
        for line in data[:-1].decode("utf-8", "surrogateescape").split("\n"):
            event, tok = strsep(line, ":")
            self._process_assign(group, event or "", tok)

    def _process_assign(self, group: Group, event: str, tok: str | None) -> None:
        """``resctrl_process_assign()``."""
        if event not in self.events:
            raise SimError(errno.ENOENT, f"Invalid event {event}\n")
        while tok:
            item, tok = strsep(tok, ";")
            id_str, state = strsep(strim(item or ""), "=")
            shown = "(null)" if state is None else state
            if id_str is not None and id_str.startswith("*"):
                try:
                    self._modify(state, None, group, event)
                except SimError as e:
                    msg = f"Assign operation '{event}:*={shown}' failed\n"
                    raise SimError(e.errno, msg) from None
                return  # the rest of the line is not looked at
            dom = kstrtoul(id_str, 10)
            if dom is None:
                raise SimError(errno.EINVAL, "Missing domain id\n")
            if dom not in self.domains:
                raise SimError(errno.EINVAL, f"Invalid domain id {dom}\n")
            try:
                self._modify(state, dom, group, event)
            except SimError as e:
                msg = f"Assign operation '{event}:{dom}={shown}' failed\n"
                raise SimError(e.errno, msg) from None

    def _modify(self, state: str | None, dom: int | None, group: Group, event: str) -> None:
        """``rdtgroup_modify_assign_state()``: exactly ``e`` or ``_``."""
        if state == "e":
            self.assign_event(group, event, dom)
        elif state == "_":
            for d in self.domains if dom is None else [dom]:
                self._unassign(group, event, d)
        else:
            raise SimError(errno.EINVAL)

    def write_action(self, what: str, event: str, data: bytes, groups: list[Group]) -> None:
        """A scenario or control action that writes ``mbm_assign_mode``,
        an ``event_filter`` or a BMEC ``*_bytes_config`` file (ENOENT while
        that file is hidden or absent)."""
        if what == "assign_mode" and self.mode_file:
            self.write_mode(data, groups)
        elif what == "event_filter" and self.assignable and event in self.events:
            self.write_filter(event, data, groups)
        elif what == "bmec_config" and self.bmec_files and event in self.bmec.config_events:
            self.bmec.write(event, data, groups)
        else:
            raise SimError(errno.ENOENT)

    @property
    def bmec_files(self) -> bool:
        """Whether the BMEC files are shown (hidden in mbm_event mode)."""
        return self.bmec.present and not self.enabled

    def state(self) -> dict[str, object]:
        return {
            "mbm_assign_mode": "mbm_event" if self.enabled else "default",
            "available_mbm_cntrs": {d: self.available(d) for d in self.domains},
        }


def _reset(group: Group, event: str, dom: int) -> None:
    if (event, dom) in group.counters:
        group.counters[(event, dom)] = 0.0
