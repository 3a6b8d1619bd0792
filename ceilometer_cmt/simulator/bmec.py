"""BMEC: ``info/L3_MON/mbm_total_bytes_config`` and ``mbm_local_bytes_config``
(AMD Bandwidth Monitoring Event Configuration).

Follows ``fs/resctrl/rdtgroup.c``: ``mbm_config_show()`` (``%d=0x%02x``
per domain, ``;``-joined), ``mon_config_write()`` (the parser and its
last_cmd_status lines) and ``mbm_config_write_domain()`` (a write that
changes a domain's value clears the bandwidth counters of every RMID, both
events, in that domain; the hardware then answers ``Unavailable`` once per
RMID and event: ``MSR_IA32_QM_CTR.Unavailable``, [DOC] resctrl.rst).
Writing the value a domain already has does nothing.

The files are hidden in ``mbm_event`` mode (``resctrl_bmec_files_show()``);
:mod:`.layout` hides them, :mod:`.assign` switches the mode.

The configuration is kept and shown; the simulated bandwidth does not
depend on which transaction types it selects.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Group
from ceilometer_cmt.simulator.kstr import kstrtoul, strim, strsep
from ceilometer_cmt.simulator.topology import Topology

#: ``r->mon.mbm_cfg_mask`` on AMD: the seven transaction types ([DOC] bits 0-6)
CFG_MASK = 0x7F
#: [DOC] defaults: every transaction for total; local reads, local
#: non-temporal writes, local slow-memory reads for local
DEFAULTS = {"mbm_total_bytes": CFG_MASK, "mbm_local_bytes": 0x15}
MBM = tuple(DEFAULTS)


class Bmec:
    """Per-domain event configuration and the RMIDs whose next read is
    ``Unavailable``."""

    def __init__(self, topology: Topology) -> None:
        self.present = topology.bmec
        self.config_events = tuple(e for e in MBM if e in topology.mon_features)
        self.domains = [d.id for d in topology.mon_domains]
        self.config = {(ev, d): DEFAULTS[ev] for ev in MBM for d in self.domains}
        #: (rmid, event, domain) read as "Unavailable" once
        self.pending: set[tuple[int, str, int]] = set()

    def text(self, event: str) -> str:
        """``mbm_config_show()``: ``0=0x7f;1=0x7f``."""
        return ";".join(f"{d}=0x{self.config[(event, d)]:02x}" for d in self.domains) + "\n"

    def write(self, event: str, data: bytes, groups: Iterable[Group]) -> None:
        """``mon_config_write()``; ``data`` ends with its newline (checked
        first, before last_cmd_status is cleared).  Domains before a bad
        entry keep their new value."""
        tok: str | None = data[:-1].decode("utf-8", "surrogateescape")
        groups = list(groups)
        while tok:
            item, tok = strsep(tok, ";")
            assert item is not None
            id_str, val_str = strsep(strim(item), "=")
            dom = kstrtoul(id_str, 10)
            if dom is None:
                raise SimError(errno.EINVAL, "Missing '=' or non-numeric domain id\n")
            val = kstrtoul(val_str, 16)
            if val is None:
                raise SimError(errno.EINVAL, "Non-numeric event configuration value\n")
            if val & CFG_MASK != val:
                raise SimError(
                    errno.EINVAL,
                    f"Invalid event configuration: max valid mask is 0x{CFG_MASK:02x}\n",
                )
            if dom not in self.domains:
                raise SimError(errno.EINVAL)  # no message in the kernel
            self._write_domain(event, dom, val, groups)

    def _write_domain(self, event: str, dom: int, val: int, groups: list[Group]) -> None:
        """``mbm_config_write_domain()``."""
        if self.config[(event, dom)] == val:
            return
        self.config[(event, dom)] = val
        # resctrl_arch_reset_rmid_all(): both events, every RMID, this domain
        for group in groups:
            for ev in MBM:
                if (ev, dom) in group.counters:
                    group.counters[(ev, dom)] = 0.0
                self.pending.add((group.rmid, ev, dom))

    def mkdir(self, group: Group) -> None:
        """A new group's first read happens in mkdir (``mon_add_all_files()``
        reads every event once), so its user never sees the Unavailable."""
        self.pending = {p for p in self.pending if p[0] != group.rmid}

    def word(self, rmid: int, event: str, dom: int) -> str | None:
        """"Unavailable" for the first read after a reset, else None."""
        key = (rmid, event, dom)
        if key in self.pending:
            self.pending.discard(key)
            return "Unavailable"
        return None
