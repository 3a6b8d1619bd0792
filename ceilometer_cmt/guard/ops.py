"""The writes the guard makes, by name: the protocol its service calls.

Two implementations slot in: direct writes under the resctrl root (a guard
running as root, the tests on the simulator) and the privileged daemon
(``ceilometer_cmt.privsep``), which takes these same names, never paths,
and checks each against its rules before it writes.

Names:

* ``ctrl``: a control group directly under the resctrl root; ``""`` is the
  default group. The guard makes and removes only its own cap groups,
  ``<prefix>cap-<share>`` (:meth:`policy.Options.group_name`).
* ``uuid``: the instance; its monitor group under ``ctrl`` is the agent's
  ``<prefix><uuid>``, so monitoring follows the threads.
* ``domain_name``: the libvirt domain whose qemu owns the threads.

Every method raises :class:`OSError` with the kernel's errno; where the
kernel explains a refusal in ``info/last_cmd_status``, that text is the
exception's ``strerror``.
"""

from __future__ import annotations

from typing import Protocol


class CatOps(Protocol):
    def make_ctrl_group(self, ctrl: str) -> None:
        """``mkdir <root>/<ctrl>``: a new control group (takes a CLOSID;
        ENOSPC "Out of CLOSIDs" when none is left)."""
        ...

    def remove_ctrl_group(self, ctrl: str) -> None:
        """``rmdir <root>/<ctrl>``: its tasks go back to the default group,
        its monitor groups go with it."""
        ...

    def write_schemata(self, ctrl: str, lines: list[str]) -> None:
        """Write ``<root>/<ctrl>/schemata``, one resource line per write
        (``L3:0=f;1=f``, or ``L3CODE``/``L3DATA`` on CDP hosts)."""
        ...

    def move_threads(self, ctrl: str, uuid: str, domain_name: str,
                     tids: list[int]) -> list[tuple[int, int]]:
        """Move the instance's threads into control group ``ctrl`` and into
        its monitor group ``<ctrl>/mon_groups/<prefix><uuid>`` (made if
        missing): first ``<ctrl>/tasks``, then the monitor group's ``tasks``
        (the kernel refuses a move into a monitor group of another control
        group). Returns the threads that failed, with their errno."""
        ...
