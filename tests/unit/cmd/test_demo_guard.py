"""The demo's guard, its pure half: the noisy neighbour's story, the
``[cmt_guard]`` section, the events and the live view's lines."""

from __future__ import annotations

import os

import pytest

from ceilometer_cmt.cmd import guard as guard_cmd
from ceilometer_cmt.cmd.demo_guard import (
    CALM,
    CAP_AFTER,
    PEAK,
    RELEASE_AFTER,
    climb_for,
    clock_step,
    describe_action,
    event_lines,
    guard_conf,
    noisy_shape,
)
from ceilometer_cmt.cmd.demo_host import NOISY_FROM, scenario_for
from ceilometer_cmt.guard import policy
from ceilometer_cmt.guard.service import GuardAction, GuardReport
from ceilometer_cmt.simulator.timeline import Point, Timeline
from ceilometer_cmt.testing.fakehost import make_instances


def workload(climb: float) -> Timeline:
    """The shape as the simulator reads it (its own timeline)."""
    return Timeline(tuple(Point(t, {("occupancy", 0): p})
                          for t, p in noisy_shape(climb, NOISY_FROM)), repeat=True)


def story(cycles: int, step: float) -> list[tuple[int, str]]:
    """(cycle, action) the guard's policy takes over a demo run of ``cycles``:
    the noisy neighbour reads its workload, at most its share once capped."""
    opts = policy.Options(cap_after=CAP_AFTER, release_after=RELEASE_AFTER)
    line = workload(climb_for(cycles, step))
    state: dict[str, policy.InstanceState] = {}
    share: int | None = None
    done = []
    for k in range(1, cycles + 1):
        pct = line.value("occupancy", 0, (k - 1) * step)
        if share is not None:
            pct = min(pct, share)
        group = opts.group_name(share) if share is not None else policy.DEFAULT_GROUP
        inst = policy.SeenInstance("noisy", {0: pct}, frozenset({0}), frozenset({group}))
        cycle = policy.Cycle((inst,), policy.Closids(16, 0 if share is None else 1),
                             frozenset({group}) - {policy.DEFAULT_GROUP})
        state, plan = policy.decide(state, cycle, opts)
        for a in plan.actions:
            if a.kind in ("cap", "release"):
                done.append((k, a.kind))
                share = a.share if a.kind == "cap" else None
    return done


@pytest.mark.parametrize("cycles", [20, 24, 28, 30])
@pytest.mark.parametrize("step", [0.1, 2.0])
def test_a_run_of_20_to_30_cycles_shows_a_cap_then_a_release(cycles: int, step: float) -> None:
    done = story(cycles, step)
    assert [kind for _, kind in done] == ["cap", "release"]
    (cap, _), (release, _) = done
    assert release - cap > RELEASE_AFTER  # capped for a while, then calm for release_after
    assert release < cycles  # at least one cycle shows it released


def test_the_shape_climbs_past_cap_above_and_calms_below_the_capped_threshold() -> None:
    opts = policy.Options()
    points = noisy_shape(10.0, NOISY_FROM)
    assert points[0] == (0.0, NOISY_FROM) and points[-1] == (35.0, CALM)
    assert PEAK > opts.cap_above and CALM < opts.calm_below(opts.cap_share)


def test_the_climb_fits_the_run_or_takes_seven_cycles() -> None:
    # the shape ends one step after the last cycle's read: no restart at the end
    assert climb_for(24, 0.5) * 3.5 == pytest.approx(24 * 0.5)
    assert climb_for(None, 2.0) == 14.0
    assert clock_step(0.2) == 0.2 and clock_step(0) == 1.0


def test_the_scenario_repeats_the_shape() -> None:
    insts = make_instances(2)
    doc = scenario_for(insts, insts[1], [0, 1], 10.0, shape=noisy_shape(10.0, NOISY_FROM))
    loud = doc["processes"][-1]
    assert loud["repeat"] is True
    assert [(p["t"], p["occupancy"]) for p in loud["timeline"]] == [
        (t, {0: f"{pct}%"}) for t, pct in noisy_shape(10.0, NOISY_FROM)]
    # bandwidth follows occupancy, never below half a GiB/s
    totals = [p["mbm_total"][0] for p in loud["timeline"]]
    assert totals[1] > totals[0] > totals[-1] >= 512 * 1024 * 1024


def test_guard_conf_is_what_the_guard_command_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "ceilometer.conf"
    conf.write_text("[cmt]\nresctrl_root = /x\n" + guard_conf(str(tmp_path / "guard.lock")))
    opts = guard_cmd.guard_options(guard_cmd.load_conf([str(conf)]))
    assert opts.dry_run is False
    assert opts.lock_file == os.path.join(tmp_path, "guard.lock")
    assert (opts.policy.cap_after, opts.policy.release_after) == (CAP_AFTER, RELEASE_AFTER)
    assert (opts.policy.cap_above, opts.policy.cap_share) == (50.0, 25)  # the service's


def test_events_are_the_guard_commands_lines_with_the_cycle() -> None:
    result = GuardReport(7, False, (GuardAction("cap", "u-1", 25, "holds 60%"),))
    (event,) = event_lines(result, 9)
    assert event == {"event": "guard", "action": "cap", "uuid": "u-1", "share": 25,
                     "reason": "holds 60%", "dry_run": False, "cycle": 9}
    assert describe_action(event, {"u-1": "vm-2"}) == (
        "guard, after cycle 9: capped vm-2 to 25% of the L3 ways: holds 60%")
    release = {**event, "action": "release", "reason": "calm"}
    assert describe_action(release, {}) == (
        "guard, after cycle 9: released u-1 (was capped to 25%): calm")
