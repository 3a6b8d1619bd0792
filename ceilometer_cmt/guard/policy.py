"""The guard's decision, one cycle at a time: which instances to cap with
CAT, which to release, which control groups to make and remove.

Pure: :func:`decide` takes the last state and what this cycle saw, and
returns the next state and a :class:`GuardPlan`; it reads no file and writes
none.  The state is one small :class:`InstanceState` per instance (streak
counters); whether an instance is capped is read every cycle from the
control group its threads are in, so a restarted guard adopts its groups
and their members from what it finds, and an action that failed half way
is seen as such and completed or undone next cycle.

Rules:

* **Cap** when an instance holds more than ``cap_above`` percent of an L3
  domain that another running instance shares, for ``cap_after``
  consecutive cycles.  No neighbour in that domain, no victim: no cap.
* **Where**: one control group per cap level, ``<prefix>cap-<share>``,
  shared by every capped instance (CLOSIDs are few).  A new group takes a
  CLOSID only if ``closid_reserve`` (default half of ``num_closids``) stay
  free for libvirt's ``<cachetune>``; otherwise each waiting instance gets
  a :class:`Refusal` with the reason, and nothing is done.
* **Release** after ``release_after`` consecutive calm cycles, at once when
  it becomes exempt, and (no move: its threads are gone) when it stops or
  leaves.  A calm cycle: it holds less than :meth:`Options.calm_below` in
  every domain, or no other instance shares any of its domains.  A capped
  instance cannot hold more than its share (25 by default, below the
  default ``release_below`` of 30), so the release threshold is scaled to
  the cache it may fill: ``min(release_below, share * release_below /
  cap_above)`` (15 by default).  Otherwise every capped instance would look
  calm, be released and be capped again a few cycles later: a flap.
* **Never touch** an instance whose threads are in a control group that is
  not ours (libvirt ``<cachetune>``, another tool), nor one whose flavor or
  metadata says ``cmt:guard=off``.
* A cycle without data for an instance (every domain ``None``) neither
  advances nor resets its streaks.
* **Remove** a group of ours when no instance is left in it.
* A cap group has one mask per L3 domain and the guard gives the cap share
  in each: a capped instance is capped in every domain it runs in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ceilometer_cmt.backends.resctrl.schemata import cap_share

#: the default control group, as :attr:`SeenInstance.groups` names it
DEFAULT_GROUP = ""


@dataclass(frozen=True)
class Options:
    """``[cmt_guard]`` (the oslo options come with the service)."""

    prefix: str = "ceilometer-"
    cap_above: float = 50.0
    cap_after: int = 3
    release_below: float = 30.0
    release_after: int = 10
    cap_share: int = 25
    #: CLOSIDs kept free for libvirt; None: half of num_closids
    closid_reserve: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.release_below < self.cap_above <= 100:
            raise ValueError("need 0 <= release_below < cap_above <= 100")
        if self.cap_after < 1 or self.release_after < 1:
            raise ValueError("cap_after and release_after count cycles: at least 1")
        if not 0 < self.cap_share <= 100:
            raise ValueError("cap_share is a percentage in (0, 100]")
        if self.closid_reserve is not None and self.closid_reserve < 0:
            raise ValueError("closid_reserve cannot be negative")
        if not self.prefix or "/" in self.prefix or "\n" in self.prefix:
            raise ValueError("prefix must be a non-empty directory name part")

    def group_name(self, share: int) -> str:
        return f"{self.prefix}cap-{share}"

    def share_of_group(self, name: str) -> int | None:
        """The share a group of ours caps to; None if ``name`` is not ours
        (the backend's :func:`~ceilometer_cmt.backends.resctrl.schemata.cap_share`,
        which the agent reads the same names with)."""
        return cap_share(self.prefix, name)

    def ours(self, control_groups: Iterable[str]) -> frozenset[str]:
        """The control groups (root directory names) that are the guard's:
        :attr:`Cycle.our_groups`; every other one is left alone."""
        return frozenset(g for g in control_groups if self.share_of_group(g) is not None)

    def reserve(self, num_closids: int) -> int:
        return num_closids // 2 if self.closid_reserve is None else self.closid_reserve

    def calm_below(self, share: int | None) -> float:
        """Occupancy percent under which a cycle is calm for an instance
        capped to ``share`` (uncapped: None)."""
        if share is None:
            return self.release_below
        return min(self.release_below, share * self.release_below / self.cap_above)


@dataclass(frozen=True)
class SeenInstance:
    """What one cycle saw of one running instance."""

    uuid: str
    #: L3 domain id -> percent of that domain it holds (None: no data)
    occupancy: Mapping[int, float | None]
    #: L3 domains where another running instance runs too
    neighbours: frozenset[int] = frozenset()
    #: the control groups its threads are in (DEFAULT_GROUP: the root)
    groups: frozenset[str] = frozenset({DEFAULT_GROUP})
    #: ``cmt:guard=off`` in its flavor extra specs or metadata
    exempt: bool = False


@dataclass(frozen=True)
class Closids:
    """``num_closids`` (the smallest of the schemata's ``info/*/num_closids``)
    and how many control groups besides the default one exist (anyone's)."""

    num_closids: int
    in_use: int


@dataclass(frozen=True)
class Cycle:
    instances: tuple[SeenInstance, ...]
    closids: Closids
    #: control groups with our prefix that exist now, members or not
    our_groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class InstanceState:
    """Streaks of one instance, and the share it is capped to (None: not)."""

    hot: int = 0
    calm: int = 0
    capped: int | None = None


@dataclass(frozen=True)
class Step:
    """``mkdir`` (make ``group`` and write its schemata for ``share``),
    ``cap`` (move ``uuid``'s threads into ``group``), ``release`` (move
    them back to the default group; ``move`` False when there is nothing to
    move), ``rmdir`` (remove the empty ``group``)."""

    kind: str
    group: str
    uuid: str = ""
    share: int | None = None
    reason: str = ""
    move: bool = True


@dataclass(frozen=True)
class Refusal:
    uuid: str
    reason: str


@dataclass(frozen=True)
class GuardPlan:
    actions: tuple[Step, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    #: uuid -> share, for every instance capped once the actions are done
    capped: Mapping[str, int] = field(default_factory=dict)


def _placement(inst: SeenInstance, options: Options) -> tuple[bool, int | None, bool]:
    """(foreign, capped share, threads outside the cap group)."""
    ours = {g: options.share_of_group(g) for g in inst.groups if g != DEFAULT_GROUP}
    if any(share is None for share in ours.values()):
        return True, None, False
    shares = sorted({s for s in ours.values() if s is not None})
    if not shares:
        return False, None, False
    share = options.cap_share if options.cap_share in shares else shares[-1]
    return False, share, len(inst.groups) > 1


def _step(inst: SeenInstance, st: InstanceState, capped: int | None,
          options: Options) -> tuple[InstanceState, str]:
    """The streaks after this cycle, and the reason when one completed."""
    data = {d: v for d, v in inst.occupancy.items() if v is not None}
    if capped is None:
        if not data:
            return replace(st, capped=None, calm=0), ""
        hot = sorted(d for d, v in data.items() if v > options.cap_above and d in inst.neighbours)
        streak = min(st.hot + 1, options.cap_after) if hot else 0
        new = InstanceState(hot=streak, calm=0, capped=None)
        if streak >= options.cap_after:
            worst = max(hot, key=lambda d: data[d])
            return new, (f"holds {data[worst]:.0f}% of L3 domain {worst} (above "
                         f"{options.cap_above:g}% for {options.cap_after} cycles) beside "
                         "another instance")
        return new, ""
    below = options.calm_below(capped)
    alone = not inst.neighbours
    if not data and not alone:
        return replace(st, capped=capped, hot=0), ""
    calm = alone or all(v < below for v in data.values())
    streak = min(st.calm + 1, options.release_after) if calm else 0
    new = InstanceState(hot=0, calm=streak, capped=capped)
    if streak >= options.release_after:
        why = ("no other instance shares its L3 domains" if alone else
               f"below {below:g}% of every L3 domain")
        return new, f"{why} for {options.release_after} cycles"
    return new, ""


def decide(state: Mapping[str, InstanceState], cycle: Cycle,
           options: Options) -> tuple[dict[str, InstanceState], GuardPlan]:
    """The next state and what to do now (see the module's rules)."""
    new_state: dict[str, InstanceState] = {}
    caps: list[tuple[str, str]] = []  # (uuid, reason)
    actions: list[Step] = []
    releases: list[Step] = []
    members: dict[str, set[str]] = {g: set() for g in cycle.our_groups}
    seen = {inst.uuid for inst in cycle.instances}
    for uuid, old in sorted(state.items()):
        if uuid not in seen and old.capped is not None:
            releases.append(Step("release", options.group_name(old.capped), uuid, old.capped,
                                   "the instance stopped or left the host", move=False))
    for inst in cycle.instances:
        st = state.get(inst.uuid, InstanceState())
        foreign, capped, stragglers = _placement(inst, options)
        if foreign:
            if st.capped is not None:
                releases.append(Step(
                    "release", options.group_name(st.capped), inst.uuid, st.capped,
                    "its threads are in another tool's control group: left alone",
                    move=False))
            new_state[inst.uuid] = InstanceState()
            continue
        if capped is not None:
            group = options.group_name(capped)
            members.setdefault(group, set()).add(inst.uuid)
        if inst.exempt:
            if capped is not None:
                releases.append(Step("release", options.group_name(capped), inst.uuid,
                                       capped, "exempt (cmt:guard=off)"))
            new_state[inst.uuid] = InstanceState()
            continue
        nxt, reason = _step(inst, st, capped, options)
        new_state[inst.uuid] = nxt
        if capped is None and reason:
            caps.append((inst.uuid, reason))
        elif capped is not None and reason:
            releases.append(Step("release", options.group_name(capped), inst.uuid,
                                   capped, reason))
            new_state[inst.uuid] = InstanceState()
        elif capped is not None and stragglers:
            actions.append(Step("cap", options.group_name(capped), inst.uuid, capped,
                                  "some of its threads are outside its cap group"))
    refusals = _take_group(caps, cycle, options, members, actions)
    for uuid, _ in caps:
        if any(a.kind == "cap" and a.uuid == uuid for a in actions):
            new_state[uuid] = InstanceState(capped=options.cap_share)
    for rel in releases:
        members.get(rel.group, set()).discard(rel.uuid)
    actions.extend(releases)
    actions.extend(Step("rmdir", g, reason="no capped instance left in it")
                   for g in sorted(cycle.our_groups) if not members.get(g))
    capped_now = {u: s.capped for u, s in new_state.items() if s.capped is not None}
    return new_state, GuardPlan(tuple(actions), tuple(refusals), capped_now)


def _take_group(caps: list[tuple[str, str]], cycle: Cycle, options: Options,
                members: dict[str, set[str]], actions: list[Step]) -> list[Refusal]:
    """Cap actions for ``caps`` into the current share's group, after its
    mkdir when it does not exist and a CLOSID may be taken; else refusals."""
    if not caps:
        return []
    group = options.group_name(options.cap_share)
    if group not in cycle.our_groups:
        c = cycle.closids
        free = c.num_closids - 1 - c.in_use
        reserve = options.reserve(c.num_closids)
        if free - 1 < reserve:
            why = (f"no CLOSID may be taken for {group}: {c.in_use} of {c.num_closids - 1} "
                   f"control groups in use, {reserve} kept free for libvirt (closid_reserve)")
            return [Refusal(uuid, why) for uuid, _ in caps]
        actions.append(Step("mkdir", group, share=options.cap_share,
                              reason=f"a control group for {options.cap_share}% of the ways"))
    for uuid, reason in caps:
        actions.append(Step("cap", group, uuid, options.cap_share, reason))
        members.setdefault(group, set()).add(uuid)
    return []
