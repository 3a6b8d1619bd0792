"""``ceilometer-cmt demo --guard``: the guard beside the agent on the demo host.

The guard (:mod:`ceilometer_cmt.guard.service`, not a dry run) runs in the
demo's process, one guard cycle right after each polling cycle, with the
demo's own config: the same resctrl root, group prefix and pid directory,
and a ``[cmt_guard]`` section (:func:`guard_conf`) whose streaks are short
(``cap_after`` = ``release_after`` = 3) so that a run of about 25 cycles
shows a cap and a release. It is built from ``ceilometer-cmt guard``'s own
parts (:mod:`ceilometer_cmt.cmd.guard`: the options, the direct writes as
``[cmt] privsep = never`` says, the libvirt instances, the JSON lines), so
what the demo shows is what the service does.

The scenario (:func:`noisy_shape`): the noisy neighbour climbs past
``cap_above`` (to :data:`PEAK` percent of its L3), stays there, falls to
:data:`CALM` percent (below the capped instance's calm threshold) and stays
calm; the shape repeats when the demo runs until Ctrl-C.  Its clock is the
simulator's manual clock, moved by one ``--interval`` after each cycle
(:meth:`DemoGuard.after_cycle`), so the story takes the same number of
cycles on a slow machine as on a fast one.  The agent divides bytes by its
own (wall-clock) seconds, so the bandwidth shown is somewhat below the
scenario's when a cycle takes time beyond ``--interval``.

On exit :meth:`DemoGuard.stop` undoes every cap the way an operator would
(``ceilometer-cmt cleanup --guard``, :func:`ceilometer_cmt.cmd.guard.cleanup`),
releases the guard's lock, and says what is left, if anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ceilometer_cmt.cmd.demo_signals import uninterrupted

#: the noisy neighbour's occupancy of its L3 at the top of the climb, and once calm
PEAK, CALM = 60.0, 5.0
#: the demo's [cmt_guard] (the service's defaults for the rest: cap_above 50,
#: cap_share 25, release_below 30, i.e. 15 for an instance capped to 25)
CAP_AFTER = RELEASE_AFTER = 3
#: the shape's phases in units of the climb: climb, hold, fall, calm
HOLD_END, FALL_END, CALM_END = 2.0, 2.5, 3.5
#: the climb without --cycles, in cycles
CLIMB_CYCLES = 7
#: actions shown under the live view
SHOWN = 3


def noisy_shape(climb: float, start: float) -> list[tuple[float, float]]:
    """(time, percent of its L3) points: ``start`` -> :data:`PEAK` over
    ``climb`` seconds, held as long, down to :data:`CALM` over half of it,
    then calm for as long as the climb."""
    return [(0.0, start), (climb, PEAK), (HOLD_END * climb, PEAK),
            (FALL_END * climb, CALM), (CALM_END * climb, CALM)]


def climb_for(cycles: int | None, step: float) -> float:
    """The climb's seconds: with ``--cycles`` the whole shape fits the run
    (cycle ``k`` reads at ``(k - 1) * step``: the shape ends one step after
    the last read, so that the repetition does not start there), else
    :data:`CLIMB_CYCLES` cycles (the shape repeats until Ctrl-C)."""
    if cycles:
        return cycles * step / CALM_END
    return CLIMB_CYCLES * step


def clock_step(interval: float) -> float:
    """Scenario seconds per cycle: ``--interval``, or 1 with ``--interval 0``."""
    return interval if interval > 0 else 1.0


def guard_conf(lock_file: str) -> str:
    """The ``[cmt_guard]`` section of the demo's config."""
    return ("[cmt_guard]\n"
            # the demo shows the guard acting: caps are applied
            "dry_run = false\n"
            f"cap_after = {CAP_AFTER}\n"
            f"release_after = {RELEASE_AFTER}\n"
            f"lock_file = {lock_file}\n")


def event_lines(result: Any, cycle: int) -> list[dict[str, Any]]:
    """The guard's own ``--json`` lines for one cycle, each with the number
    of the polling cycle it followed."""
    from ceilometer_cmt.cmd import guard as guard_cmd

    return [{**json.loads(line), "cycle": cycle} for line in guard_cmd.json_lines(result)]


def describe_action(event: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """One line of the live view for one guard event."""
    who = names.get(event["uuid"], event["uuid"])
    if event["action"] == "cap":
        what = f"capped {who} to {event['share']}% of the L3 ways"
    else:
        what = f"released {who} (was capped to {event['share']}%)"
    return f"guard, after cycle {event['cycle']}: {what}: {event['reason']}"


@dataclass
class DemoGuard:
    """The guard of one demo run: :meth:`start`, :meth:`after_cycle`, :meth:`stop`."""

    config_file: str
    names: Mapping[str, str] = field(default_factory=dict)
    step: float = 1.0
    simulator: Any = None
    guard: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)
    #: cap groups removed at exit (a run stopped while an instance was capped)
    removed: list[str] = field(default_factory=list)
    _conf: Any = None

    def start(self) -> DemoGuard:
        from ceilometer_cmt.backends.resctrl import fs
        from ceilometer_cmt.cmd import guard as guard_cmd
        from ceilometer_cmt.cmd import guard_instances
        from ceilometer_cmt.guard.service import Guard

        self._conf = guard_cmd.load_conf([self.config_file])
        opts = guard_cmd.guard_options(self._conf)
        fs.verify_mount(opts.resctrl_root, opts.proc_root)
        guard = Guard(opts, guard_cmd.cat_ops(self._conf, opts),
                      guard_instances.lister(self._conf))
        with uninterrupted():  # the lock is recorded before a stop can end us
            self.guard = guard.start()
        return self

    def describe(self) -> dict[str, Any]:
        """The policy at work (the start event's ``guard``): when the noisy
        neighbour is capped, to what, and when it is released."""
        if self.guard is None:
            return {}
        pol = self.guard.options.policy
        return {"cap_above": pol.cap_above, "cap_after": pol.cap_after,
                "cap_share": pol.cap_share, "release_after": pol.release_after,
                # what a capped instance must stay under (policy.Options.calm_below)
                "release_below": pol.calm_below(pol.cap_share),
                "peak": PEAK, "calm": CALM, "clock_step": self.step}

    def after_cycle(self, cycle: int) -> list[dict[str, Any]]:
        """One guard cycle after polling cycle ``cycle``, then the scenario's
        clock moves one step; the guard's events of this cycle.  Not cut by a
        stop signal: an action done is always reported."""
        from ceilometer_cmt.errors import CmtError

        assert self.guard is not None
        with uninterrupted():
            try:
                result = self.guard.cycle()
            except (OSError, CmtError) as e:  # as the service does: next cycle
                import logging

                logging.getLogger(__name__).warning("guard cycle failed: %s", e)
                new: list[dict[str, Any]] = []
            else:
                new = event_lines(result, cycle)
            self.events.extend(new)
            if self.simulator is not None:
                self.simulator.advance(self.step)
        return new

    def footer(self) -> str:
        """The last :data:`SHOWN` actions, one line each ('' before any)."""
        return "\n".join(describe_action(e, self.names) for e in self.events[-SHOWN:])

    def stop(self) -> list[str]:
        """Undo every cap, release the lock; what is left (empty: nothing)."""
        if self.guard is None:
            return []
        from ceilometer_cmt.backends.resctrl import fs
        from ceilometer_cmt.cmd import guard as guard_cmd
        from ceilometer_cmt.guard.service import GuardBusy, GuardLock

        opts = self.guard.options
        errors: list[str] = []
        root, pol = opts.resctrl_root, opts.policy
        said = io.StringIO()
        try:
            self.removed = sorted(pol.ours(fs.list_ctrl_groups(root)))
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                status = guard_cmd.cleanup([self.config_file])
            left = sorted(pol.ours(fs.list_ctrl_groups(root)))
        except OSError as e:
            status, left = 1, []
            said.write(str(e))
        # Ctrl-C on a terminal stops the simulator too (its process group): its
        # groups, ours among them, went with its mount, and nothing is left
        if _serving(root):
            if status:
                errors.append(f"guard cleanup failed: {said.getvalue().strip()}")
            errors.extend(f"cap control group {os.path.join(root, g)}" for g in left)
        self.guard.stop()
        self.guard = None
        try:
            GuardLock(opts.lock_file).acquire().release()
        except GuardBusy:
            errors.append(f"the guard still holds {opts.lock_file}")
        except OSError:
            pass  # no lock file to take: nobody holds it
        return errors


def _serving(root: str) -> bool:
    """The simulator still serves ``root`` (mounted, and answering)."""
    from ceilometer_cmt.simulator import mount_fstype

    return mount_fstype(root) is not None and os.path.isdir(os.path.join(root, "info"))
