"""RMID and CLOSID accounting, with the kernel's limbo for freed RMIDs.

RMIDs come from a free list in LRU order (RMID 0 is the root group's and is
never handed out).  ``rmdir`` puts a group's RMID in limbo for
``limbo_seconds`` (the hardware still counts cache lines tagged with it);
with the free list empty, ``mkdir`` fails with EBUSY while RMIDs sit in
limbo, ENOSPC otherwise, both reported as "Out of RMIDs".  No CLOSID left:
ENOSPC ("Out of CLOSIDs").

With RMIDs that depend on the CLOSID (arm64 MPAM, ``pmgs`` > 0) an RMID is
the index ``closid * pmgs + pmg`` of one (PARTID, PMG) pair, and a group
takes only an RMID of its own CLOSID (``resctrl_find_free_rmid()``: the
first free one of that CLOSID in LRU order, ENOSPC when there is none even
while others sit in limbo); a new control group gets the free CLOSID with
the fewest RMIDs in limbo (``resctrl_find_cleanest_closid()``).
"""

from __future__ import annotations

import errno
from collections import deque

from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.topology import Topology


class IdPool:
    def __init__(self, topology: Topology, limbo_seconds: float) -> None:
        num_rmids, num_closids = topology.rmid_limit, topology.num_closids
        self.num_rmids = num_rmids
        self.pmgs = topology.pmgs
        self.limbo_seconds = limbo_seconds
        self.free_rmids: deque[int] = deque(range(1, num_rmids))
        self.limbo: list[tuple[float, int]] = []  # (release time, rmid)
        self.free_closids: set[int] = set(range(1, num_closids))

    # ------------------------------------------------------------ RMIDs
    def alloc_rmid(self, closid: int = 0) -> int:
        """An RMID for a new group of ``closid``; EBUSY (RMIDs in limbo) or ENOSPC."""
        if not self.free_rmids:
            err = errno.EBUSY if self.limbo else errno.ENOSPC
            raise SimError(err, "Out of RMIDs\n")
        if not self.pmgs:
            return self.free_rmids.popleft()
        for rmid in self.free_rmids:
            if rmid // self.pmgs == closid:
                self.free_rmids.remove(rmid)
                return rmid
        raise SimError(errno.ENOSPC, "Out of RMIDs\n")

    def give_back(self, rmid: int) -> None:
        """Undo :meth:`alloc_rmid` for a group that was not made after all."""
        self.free_rmids.appendleft(rmid)

    def free_rmid(self, rmid: int, now: float) -> None:
        """A group's RMID after rmdir: into limbo, or straight back."""
        if rmid == 0 or rmid >= self.num_rmids:
            return
        if self.limbo_seconds > 0:
            self.limbo.append((now + self.limbo_seconds, rmid))
        else:
            self.free_rmids.append(rmid)

    def release(self, t: float) -> None:
        """RMIDs whose limbo ended by ``t`` become free (oldest first)."""
        ready = sorted(e for e in self.limbo if e[0] <= t)
        if ready:
            self.limbo = [e for e in self.limbo if e[0] > t]
            self.free_rmids.extend(rmid for _, rmid in ready)

    def set_rmids(self, num_rmids: int, used: set[int]) -> None:
        """A new num_rmids; ``used`` (the groups' RMIDs) stay in use."""
        self.num_rmids = num_rmids
        self.limbo = [e for e in self.limbo if e[1] < num_rmids]
        in_limbo = {r for _, r in self.limbo}
        kept = [r for r in self.free_rmids if r < num_rmids]
        known = used | in_limbo | set(kept)
        kept += [r for r in range(1, num_rmids) if r not in known]
        self.free_rmids = deque(kept)

    def set_limbo(self, seconds: float, now: float) -> None:
        """A new limbo time; RMIDs in limbo wait at most that long from now."""
        self.limbo_seconds = seconds
        self.limbo = [(min(rel, now + seconds), r) for rel, r in self.limbo]
        self.release(now)

    # ---------------------------------------------------------- CLOSIDs
    def next_closid(self) -> int:
        """The CLOSID the next control group gets (not taken yet)."""
        if not self.free_closids:
            raise SimError(errno.ENOSPC, "Out of CLOSIDs\n")
        if not self.pmgs:
            return min(self.free_closids)
        dirty = [rmid // self.pmgs for _, rmid in self.limbo]
        return min(self.free_closids, key=lambda c: (dirty.count(c), c))

    def take_closid(self, closid: int) -> None:
        self.free_closids.discard(closid)

    def free_closid(self, closid: int) -> None:
        self.free_closids.add(closid)
