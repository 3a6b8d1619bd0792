"""The guard's actions through the real telemetry pipeline.

A real ``ceilometer-polling`` with this plugin polls a simulated compute
host (intel-2s) where a noisy instance holds 45% of L3 domain 0 beside a
neighbour (10%). An Aodh threshold alarm watches the noisy instance's
``cache.occupancy.percent`` (the shipped etc/aodh/instance-cache-occupancy.json
with the guard's ``cap_above`` as its threshold). Once the alarm fires, the
real ``ceilometer-cmt guard`` (not a dry run; direct writes as root, the
daemon's path is tests/functional/privsep/test_guard_through_daemon.py) runs
beside the agent with ``cap_above = 40``, ``cap_after = 1``:

- its ``cmt.guard.cap`` notification reaches the stack's RabbitMQ, where a
  listener of its own pool on the ``notifications`` topic (where
  ``[oslo_messaging_notifications]`` sends by default, and where
  ceilometer's notification agent listens) receives it;
- ceilometer's notification agent, with etc/ceilometer/cmt_event_definitions.yaml
  appended to its event definitions, makes it an event with the instance,
  its project and the share as traits and sends it to ``alarm.all``, where
  ``aodh-listener`` fires the owner's event alarm
  (etc/aodh/instance-guard-cap.json, created in the instance's project);
- the agent's ``cache.occupancy.percent`` of the noisy instance falls to
  about the cap share (25%), and the alarm goes back to ``ok`` (its
  5-minute mean falls below the threshold);
- ``cache.allocation.percent`` (when meters.py has it) reaches Gnocchi with
  25 for the capped instance;
- once the noisy instance calms (the simulated clock jumps to its 5%), the
  guard releases it: ``cmt.guard.release`` reaches the bus, the agent
  publishes ``cache.allocation.percent`` 100 again and ``cache.guard.capped``
  goes from 1 to 0.

Everything is undone at the end, pass or fail: the guard stopped, its cap
undone by ``ceilometer-cmt cleanup --guard``, the alarm deleted, the
listener stopped; the simulated host removed by its own fixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import signal
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import services
from gnocchi_measures import GRANULARITY, measures
from services import PollingAgent, Stack, wait_for
from simulated_host import HIGH, FakeCompute, HostSpec, fake_compute, shipped_polling_yaml

from ceilometer_cmt import meters

REPO = Path(__file__).resolve().parents[2]
GUARDED = HostSpec("intel-2s", "cmt-e2e-guard", 10, neighbours=1)
CACHE_INTERVAL, HOST_INTERVAL = 5, 10  # s, the two sources of etc/polling.yaml
CAP_ABOVE, CAP_SHARE = 40, 25  # the guard's policy; HIGH (45) is above it
CAP_GROUP = f"ceilometer-cap-{CAP_SHARE}"
POOL = "cmt-guard-e2e"  # the listener's own queue: ceilometer's consumers keep theirs
ALLOCATION = "cache.allocation.percent"


@dataclass
class Scene:
    st: Stack
    compute: FakeCompute
    agent: PollingAgent
    alarm_id: str
    guard: subprocess.Popen[str]
    guard_log: Path
    notes: list[tuple[str, str, dict[str, Any]]]
    #: the instance owner's Aodh (its project) and its event alarm on the cap
    owner: services.Aodh
    event_alarm_id: str
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def noisy(self) -> str:
        return self.compute.instance.uuid


@contextlib.contextmanager
def guard_notifications(url: str) -> Iterator[list[tuple[str, str, dict[str, Any]]]]:
    """(publisher_id, event_type, payload) of each ``cmt.guard.*`` notification
    on the bus's ``notifications`` topic, received by an oslo.messaging
    listener in its own pool."""
    import oslo_messaging
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    conf(args=[], project="cmt-e2e-listener", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    got: list[tuple[str, str, dict[str, Any]]] = []

    class Endpoint:
        filter_rule = oslo_messaging.NotificationFilter(event_type=r"^cmt\.guard\.")

        def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
                 metadata: Any) -> None:
            got.append((publisher_id, event_type, payload))

    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic="notifications")], [Endpoint()],
        executor="threading", pool=POOL)
    listener.start()
    try:
        yield got
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()


def guard_config(compute: FakeCompute, rabbit_url: str) -> Path:
    assert compute.base is not None
    sections: dict[str, dict[str, object]] = {
        "DEFAULT": {"host": GUARDED.host, "libvirt_uri": f"test://{compute.node}",
                    "transport_url": rabbit_url},
        "oslo_messaging_notifications": {"driver": "messagingv2"},
        "oslo_messaging_rabbit": {"heartbeat_timeout_threshold": 0},
        "cmt": dict(compute.agent_options["cmt"]),
        "cmt_guard": {"dry_run": False, "cap_above": CAP_ABOVE, "cap_share": CAP_SHARE,
                      "cap_after": 1, "release_after": 2, "interval": 2,
                      "lock_file": compute.base / "guard.lock"},
    }
    return services.write_ini(compute.base / "guard.conf", sections)


def shipped_alarm(vm: str) -> dict[str, Any]:
    """etc/aodh/instance-cache-occupancy.json, its threshold the guard's
    cap_above; no actions (the stack's webhook is test_pipeline.py's: its
    calls are checked there), the transitions are in the alarm's history."""
    text = (REPO / "etc" / "aodh" / "instance-cache-occupancy.json").read_text()
    body: dict[str, Any] = json.loads(string.Template(text).substitute(
        INSTANCE_ID=vm, WEBHOOK_URL="http://127.0.0.1:9/unused"))
    body["gnocchi_resources_threshold_rule"]["threshold"] = CAP_ABOVE
    body["alarm_actions"] = body["ok_actions"] = []
    return body


def shipped_event_alarm(vm: str) -> dict[str, Any]:
    """etc/aodh/instance-guard-cap.json, with no actions (see above)."""
    text = (REPO / "etc" / "aodh" / "instance-guard-cap.json").read_text()
    body: dict[str, Any] = json.loads(string.Template(text).substitute(
        INSTANCE_ID=vm, WEBHOOK_URL="http://127.0.0.1:9/unused"))
    body["alarm_actions"] = []
    return body


def _read_lines(proc: subprocess.Popen[str], into: list[dict[str, Any]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        with contextlib.suppress(ValueError):
            into.append(json.loads(line))


def _stop_guard(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def scene(stack: Stack) -> Iterator[Scene]:
    st = stack
    with fake_compute(GUARDED) as compute, st.diagnostics(), \
            guard_notifications(st.rabbit.url) as notes:
        vm = compute.instance.uuid
        alarm = st.aodh.create_alarm(shipped_alarm(vm))
        # Aodh matches an event alarm to the events of its own project
        owner = dataclasses.replace(st.aodh, project_id=compute.instance.project_id)
        event_alarm = owner.create_alarm(shipped_event_alarm(vm))
        with services.ceilometer_polling(st.rabbit, shipped_polling_yaml(
                CACHE_INTERVAL, HOST_INTERVAL), compute.agent_options) as agent:
            conf = guard_config(compute, st.rabbit.url)
            assert compute.base is not None
            log = compute.base / "guard.log"
            proc: subprocess.Popen[str] | None = None
            try:
                # the alarm fires on the agent's samples before the guard runs
                wait_for("the noisy instance's alarm -> alarm",
                         lambda: st.aodh.state(alarm["alarm_id"]) == "alarm", 120, interval=1)
                with open(log, "w") as err:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "ceilometer_cmt.cmd.cli", "guard",
                         "--config-file", str(conf), "--json"],
                        stdout=subprocess.PIPE, stderr=err, text=True)
                scene = Scene(st, compute, agent, alarm["alarm_id"], proc, log, notes, owner,
                              event_alarm["alarm_id"])
                threading.Thread(target=_read_lines, args=(proc, scene.lines),
                                 daemon=True).start()
                yield scene
            except BaseException:
                print(services.tail(agent.daemon.log, 60))
                raise
            finally:
                if proc is not None:
                    _stop_guard(proc)
                    if proc.stdout is not None:
                        proc.stdout.close()
                    print(services.tail(log, 40))
                    # every cap undone, as an operator would
                    subprocess.run([sys.executable, "-m", "ceilometer_cmt.cmd.cli", "cleanup",
                                    "--guard", "--config-file", str(conf)],
                                   capture_output=True, text=True, timeout=60, check=False)
                with contextlib.suppress(services.ServiceError):
                    st.aodh.request("DELETE", f"/v2/alarms/{alarm['alarm_id']}")
                with contextlib.suppress(services.ServiceError):
                    owner.request("DELETE", f"/v2/alarms/{event_alarm['alarm_id']}")
        assert not (compute.resctrl / CAP_GROUP).exists(), "cap group left behind"


def test_cap_notification_reaches_the_bus(scene: Scene) -> None:
    def capped() -> tuple[str, str, dict[str, Any]] | None:
        return next((n for n in scene.notes if n[1] == "cmt.guard.cap"), None)

    publisher, _, payload = wait_for("a cmt.guard.cap notification on RabbitMQ", capped, 60,
                                     interval=0.5)
    assert publisher == f"ceilometer-cmt-guard.{GUARDED.host}"
    assert (payload["instance_id"], payload["share"], payload["dry_run"], payload["host"]) == (
        scene.noisy, CAP_SHARE, False, GUARDED.host)
    assert payload["project_id"] == scene.compute.instance.project_id
    assert payload["domains"] == [0]
    assert f"holds {HIGH}% of L3 domain 0" in payload["reason"]
    # the guard's own line says the same, and it acted on the host
    assert [(x["action"], x["uuid"]) for x in scene.lines][:1] == [("cap", scene.noisy)]
    assert str(scene.compute.qemu.pid) in (
        scene.compute.resctrl / CAP_GROUP / "tasks").read_text().split()
    # one cap only: the neighbour is not noisy
    assert [n[2]["instance_id"] for n in scene.notes] == [scene.noisy]


def test_cap_event_fires_the_owners_event_alarm(scene: Scene) -> None:
    """Ceilometer's notification agent turns the cap notification into an
    event with the shipped definitions' traits and sends it to Aodh's
    listener, where the instance owner's event alarm
    (etc/aodh/instance-guard-cap.json) fires."""
    st = scene.st
    wait_for("the owner's guard-cap event alarm -> alarm",
             lambda: scene.owner.state(scene.event_alarm_id) == "alarm", 120, interval=1)
    [event] = st.ceilometer.events("cmt.guard.cap")
    traits = {t["name"]: t["value"] for t in event["traits"]}
    assert {k: traits.get(k) for k in ("instance_id", "project_id", "host", "share",
                                       "dry_run", "domains")} == {
        "instance_id": scene.noisy, "project_id": scene.compute.instance.project_id,
        "host": GUARDED.host, "share": CAP_SHARE, "dry_run": 0, "domains": "[0]"}
    assert f"holds {HIGH}% of L3 domain 0" in traits["reason"]
    [fired] = [h for h in scene.owner.history(scene.event_alarm_id)
               if h["type"] == "state transition"]
    assert json.loads(fired["detail"])["state"] == "alarm"
    assert "cmt.guard.cap" in fired["detail"] or "cmt.guard.cap" in fired.get("reason", "")


def test_alarm_goes_back_to_ok_after_the_cap(scene: Scene) -> None:
    st, vm = scene.st, scene.noisy
    wait_for("a cmt.guard.cap notification", lambda: scene.notes, 60, interval=0.5)

    def occupancy_capped() -> bool:
        got = st.ceilometer.published("cache.occupancy.percent", vm)
        return bool(got) and got[-1]["volume"] == pytest.approx(CAP_SHARE, abs=1.0)

    wait_for("the agent's cache.occupancy.percent at the cap share", occupancy_capped, 90,
             interval=1)
    wait_for("the noisy instance's alarm -> ok", lambda: st.aodh.state(scene.alarm_id) == "ok",
             180, interval=1)
    transitions = [json.loads(h["detail"])["state"]
                   for h in reversed(st.aodh.history(scene.alarm_id))
                   if h["type"] == "state transition"]
    assert transitions == ["alarm", "ok"]


def _seconds(sample: dict[str, Any]) -> float:
    return datetime.fromisoformat(sample["timestamp"]).timestamp()


def _allocation_missing() -> str | None:
    """Why the agent cannot poll :data:`ALLOCATION` here (None: it can)."""
    if ALLOCATION not in {m.name for m in meters.TABLE}:
        return f"{ALLOCATION} is not in ceilometer_cmt/meters.py"
    polled = {e.name for e in importlib.metadata.entry_points(group="ceilometer.poll.compute")}
    if ALLOCATION not in polled:
        return (f"{ALLOCATION} has no installed ceilometer.poll.compute entry point "
                "(pip install -e . after setup.cfg names it)")
    return None


@pytest.mark.skipif(_allocation_missing() is not None, reason=str(_allocation_missing()))
def test_allocation_percent_reaches_gnocchi_with_the_cap_share(scene: Scene) -> None:
    st, vm = scene.st, scene.noisy
    wait_for("a cmt.guard.cap notification", lambda: scene.notes, 60, interval=0.5)
    wait_for(f"a published {ALLOCATION} of {CAP_SHARE}", lambda: any(
        s["volume"] == CAP_SHARE for s in st.ceilometer.published(ALLOCATION, vm)), 90,
        interval=1)
    # uncapped the neighbour may fill every way
    assert {s["volume"] for s in st.ceilometer.published(
        ALLOCATION, scene.compute.neighbours[0][0].uuid)} == {100}

    def gnocchi_has_the_cap() -> list[Any] | None:
        """Gnocchi's newest point, once it is the mean of the bucket's published
        samples and that bucket holds a capped one (the policy keeps mean, max)."""
        with contextlib.suppress(services.ServiceError):
            points = measures(st, "instance", vm, ALLOCATION)
            if points:
                start = datetime.fromisoformat(points[-1][0]).timestamp()
                inside = [s["volume"] for s in st.ceilometer.published(ALLOCATION, vm)
                          if start <= _seconds(s) < start + GRANULARITY]
                if CAP_SHARE in inside and points[-1][2] == pytest.approx(
                        sum(inside) / len(inside)):
                    return list(points[-1])
        return None

    point = wait_for(f"{ALLOCATION} with {CAP_SHARE} in Gnocchi", gnocchi_has_the_cap, 90,
                     interval=1)
    assert point[2] < 100


@pytest.mark.skipif(_allocation_missing() is not None, reason=str(_allocation_missing()))
def test_release_reaches_the_bus_and_the_meters(scene: Scene) -> None:
    """Runs last: it calms the noisy instance."""
    st, vm = scene.st, scene.noisy
    wait_for("a cmt.guard.cap notification", lambda: scene.notes, 60, interval=0.5)
    wait_for("cache.guard.capped of 1", lambda: any(
        s["volume"] == 1 for s in st.ceilometer.published("cache.guard.capped", GUARDED.host)),
        90, interval=1)
    scene.compute.drop_occupancy()  # the noisy instance falls to 5% of L3 0

    def released() -> tuple[str, str, dict[str, Any]] | None:
        return next((n for n in scene.notes if n[1] == "cmt.guard.release"), None)

    publisher, _, payload = wait_for("a cmt.guard.release notification on RabbitMQ",
                                     released, 90, interval=0.5)
    assert publisher == f"ceilometer-cmt-guard.{GUARDED.host}"
    assert (payload["instance_id"], payload["dry_run"]) == (vm, False)
    assert [(x["action"], x["uuid"]) for x in scene.lines][:2] == [
        ("cap", vm), ("release", vm)]
    assert not (scene.compute.resctrl / CAP_GROUP).exists()  # removed when empty
    wait_for(f"a published {ALLOCATION} of 100 after the release", lambda: (
        st.ceilometer.published(ALLOCATION, vm)[-1]["volume"] == 100), 90, interval=1)
    wait_for("cache.guard.capped back to 0", lambda: (
        st.ceilometer.published("cache.guard.capped", GUARDED.host)[-1]["volume"] == 0),
        90, interval=1)
