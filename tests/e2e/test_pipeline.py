"""End to end through the real telemetry services: RabbitMQ -> ceilometer -> Gnocchi -> Aodh.

The stack (tests/e2e/services.py) runs PostgreSQL, RabbitMQ, Gnocchi API +
metricd, ceilometer-agent-notification (publishing to gnocchi:// with the
resource map of ``ceilometer-cmt gnocchi-resources``), Aodh API + evaluator +
notifier and a webhook listener, all on loopback, all stopped and removed at
the end.

Samples enter the bus the way ``ceilometer-polling`` sends them
(push_samples.py uses the polling agent's notifier, event type and payload).

Needs scripts/install-telemetry.sh to have run (the test command does it);
without it these tests skip, or fail when CMT_E2E_REQUIRED=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import string
import subprocess
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import services
from gnocchi_measures import GRANULARITY, measures, wait_measures
from services import Stack, push_samples, wait_for
from simulated_host import HIGH, LOW, fake_compute, shipped_polling_yaml

REPO = Path(__file__).resolve().parents[2]
AODH_EXAMPLES = REPO / "etc" / "aodh"


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def now_clear_of_boundary(margin: float = 45) -> datetime:
    """Now, at least ``margin`` s before the next 5-minute bucket starts.

    Alarms here compare the newest 5-minute point, so a test must not straddle a
    bucket boundary between pushing a sample and the evaluation that sees it.
    """
    while True:
        now = time.time()
        left = GRANULARITY - now % GRANULARITY
        if left > margin:
            return datetime.fromtimestamp(now, UTC)
        time.sleep(left + 0.5)


def instance_metadata(name: str, host: str = "cmt-e2e-pushed") -> dict[str, Any]:
    """The metadata make_sample_from_instance gives (what gnocchi's instance type needs)."""
    return {"display_name": name, "name": f"instance-{name}", "host": host,
            "instance_host": host, "flavor": {"id": "f-small", "name": "m1.small"},
            "instance_type": "m1.small", "cmt_backend": "e2e"}


def instance_sample(meter: str, type_: str, unit: str, volume: float, resource_id: str,
                    project_id: str, timestamp: datetime, name: str = "vm") -> dict[str, Any]:
    return {"name": meter, "type": type_, "unit": unit, "volume": volume,
            "resource_id": resource_id, "user_id": "e2e-user", "project_id": project_id,
            "timestamp": iso(timestamp), "resource_metadata": instance_metadata(name)}


def example_alarm(name: str, **values: str) -> dict[str, Any]:
    """One of etc/aodh/*.json with its $PLACEHOLDERS filled (as envsubst would)."""
    text = (AODH_EXAMPLES / name).read_text()
    body: dict[str, Any] = json.loads(string.Template(text).substitute(values))
    return body


def webhook_states(st: Stack, alarm_id: str) -> list[str]:
    return [body.get("current", "?") for _, body in st.webhook.calls
            if body.get("alarm_id") == alarm_id]


# ---------------------------------------------------------------------------- tests


def test_samples_reach_gnocchi_on_instance_and_host(stack: Stack) -> None:
    st = stack
    vm, project = str(uuid.uuid4()), "p-" + uuid.uuid4().hex[:8]
    now = now_clear_of_boundary()
    bucket = datetime.fromtimestamp(now.timestamp() // GRANULARITY * GRANULARITY, UTC)
    earlier = bucket - timedelta(seconds=GRANULARITY)  # a whole, closed 5-minute bucket
    samples = [
        instance_sample("cache.occupancy", "gauge", "B", 12582912, vm, project, now),
        instance_sample("cache.occupancy.percent", "gauge", "%", 42.5, vm, project, now),
        instance_sample("cpu_l3_cache", "gauge", "B", 12582912, vm, project, now),
        instance_sample("memory.bandwidth.total", "gauge", "B/s", 1000.0, vm, project, now),
        instance_sample("memory.bandwidth.local", "gauge", "B/s", 800.0, vm, project, now),
    ]
    # cumulative counters, one sample a minute: +60000 B and +30000 B per interval
    for i in range(3):
        t = earlier + timedelta(seconds=10 + 60 * i)
        samples.append(instance_sample("memory.bandwidth.total.bytes", "cumulative", "B",
                                       1000 + 60000 * i, vm, project, t))
        samples.append(instance_sample("memory.bandwidth.local.bytes", "cumulative", "B",
                                       500 + 30000 * i, vm, project, t))
    host = "cmt-e2e-pushed"  # not a simulated host: the polling agent's tests own those
    host_meta = {"host": host, "cache_domains": [{"id": 0, "size": 33554432}]}
    for meter, unit, volume in (("cache.size", "B", 33554432), ("cache.monitors.total",
                                "monitor", 224), ("cache.monitors.used", "monitor", 3),
                                ("cache.instances.unmonitored", "instance", 0)):
        samples.append({"name": meter, "type": "gauge", "unit": unit, "volume": volume,
                        "resource_id": host, "user_id": None, "project_id": None,
                        "timestamp": iso(now), "resource_metadata": host_meta})
    with st.diagnostics():
        push_samples(st.ceilometer.config, samples)
        point = wait_measures(st, "instance", vm, "cache.occupancy.percent")[-1]
        assert point[1:] == [float(GRANULARITY), 42.5]

        resource = st.gnocchi.get(f"/v1/resource/instance/{vm}")
        assert resource["project_id"] == project
        assert resource["display_name"] == "vm"
        assert resource["flavor_id"] == "f-small"
        assert resource["host"] == host
        units = {"cache.occupancy": ("B", "ceilometer-cmt-low"),
                 "cache.occupancy.percent": ("%", "ceilometer-cmt-low"),
                 "cpu_l3_cache": ("B", "ceilometer-cmt-low"),
                 "memory.bandwidth.total": ("B/s", "ceilometer-cmt-low"),
                 "memory.bandwidth.local": ("B/s", "ceilometer-cmt-low"),
                 "memory.bandwidth.total.bytes": ("B", "ceilometer-low-rate"),
                 "memory.bandwidth.local.bytes": ("B", "ceilometer-low-rate")}
        wait_for("all instance metrics", lambda: set(units) <= set(
            st.gnocchi.get(f"/v1/resource/instance/{vm}")["metrics"]), 30)
        metrics = st.gnocchi.get(f"/v1/resource/instance/{vm}")["metrics"]
        for meter, (unit, policy) in units.items():
            metric = st.gnocchi.get(f"/v1/metric/{metrics[meter]}")
            assert (metric["unit"], metric["archive_policy"]["name"]) == (unit, policy), meter

        # Gnocchi computes the rate from the cumulative counter: the mean increase
        # between consecutive samples (bytes per polling interval)
        rate = wait_measures(st, "instance", vm, "memory.bandwidth.total.bytes",
                             aggregation="rate:mean")
        assert rate[-1][2] == 60000.0
        rate = wait_measures(st, "instance", vm, "memory.bandwidth.local.bytes",
                             aggregation="rate:mean")
        assert rate[-1][2] == 30000.0
        peak = wait_measures(st, "instance", vm, "cache.occupancy.percent", aggregation="max")
        assert peak[-1][2] == 42.5

        # host meters on a `host` resource with host_name; Gnocchi turns the
        # non-uuid id into a uuid5 and keeps it as original_resource_id
        for meter, _, volume in (("cache.size", "B", 33554432),
                                 ("cache.monitors.used", "monitor", 3)):
            assert wait_measures(st, "host", host, meter)[-1][2] == float(volume)
        host_resource = st.gnocchi.get(f"/v1/resource/host/{host}")
        assert host_resource["host_name"] == host
        assert host_resource["original_resource_id"] == host
        host_units = {name: st.gnocchi.get(f"/v1/metric/{mid}")["unit"]
                      for name, mid in host_resource["metrics"].items()}
        assert host_units == {"cache.size": "B", "cache.monitors.total": "monitor",
                              "cache.monitors.used": "monitor",
                              "cache.instances.unmonitored": "instance"}


def test_cache_alarms_go_alarm_then_ok_and_call_the_webhook(stack: Stack) -> None:
    st = stack
    vm, project = str(uuid.uuid4()), "p-" + uuid.uuid4().hex[:8]
    hook = st.webhook.url("/cmt-alarm")
    with st.diagnostics():
        per_instance = st.aodh.create_alarm(example_alarm(
            "instance-cache-occupancy.json", INSTANCE_ID=vm, WEBHOOK_URL=hook))
        per_project = st.aodh.create_alarm(example_alarm(
            "project-cache-occupancy.json", PROJECT_ID=project, WEBHOOK_URL=hook))
        alarms = {per_instance["alarm_id"]: "instance", per_project["alarm_id"]: "project"}
        for alarm_id in alarms:
            wait_for("the evaluator to see no data yet",
                     lambda a=alarm_id: st.aodh.state(a) == "insufficient data", 30)

        # 45% in the previous 5-minute point: the newest point is above 30
        now = now_clear_of_boundary()
        push_samples(st.ceilometer.config, [instance_sample(
            "cache.occupancy.percent", "gauge", "%", 45.0, vm, project,
            now - timedelta(seconds=GRANULARITY))])
        for alarm_id, kind in alarms.items():
            wait_for(f"{kind} alarm -> alarm",
                     lambda a=alarm_id: st.aodh.state(a) == "alarm", 60, interval=1)
            st.webhook.wait(lambda _calls, a=alarm_id: "alarm" in webhook_states(st, a), 30)

        # 5% in the current point: the newest point is below 30 again
        push_samples(st.ceilometer.config, [instance_sample(
            "cache.occupancy.percent", "gauge", "%", 5.0, vm, project, now)])
        for alarm_id, kind in alarms.items():
            wait_for(f"{kind} alarm -> ok",
                     lambda a=alarm_id: st.aodh.state(a) == "ok", 60, interval=1)
            st.webhook.wait(lambda _calls, a=alarm_id: webhook_states(st, a)[-1:] == ["ok"],
                            30)
            assert webhook_states(st, alarm_id) == ["alarm", "ok"]
            transitions = [json.loads(h["detail"])["state"]
                           for h in reversed(st.aodh.history(alarm_id))
                           if h["type"] == "state transition"]
            assert transitions == ["alarm", "ok"]
        paths = {path for path, _ in st.webhook.calls}
        assert paths == {"/cmt-alarm"}
        body = next(b for _, b in st.webhook.calls
                    if b["alarm_id"] == per_instance["alarm_id"] and b["current"] == "alarm")
        assert body["alarm_name"] == f"cache-occupancy-{vm}"
        assert body["reason_data"]["most_recent"] == 45.0


def test_example_alarms_are_accepted(stack: Stack) -> None:
    """etc/aodh: every JSON body and every CLI command is valid for Aodh 23.0.0."""
    st = stack
    vm, project = str(uuid.uuid4()), "p-" + uuid.uuid4().hex[:8]
    hook = st.webhook.url("/examples")
    values = {"INSTANCE_ID": vm, "PROJECT_ID": project, "WEBHOOK_URL": hook}
    with st.diagnostics():
        created = []
        for path in sorted(AODH_EXAMPLES.glob("*.json")):
            body = example_alarm(path.name, **values)
            body["enabled"] = False  # validated by the API, never evaluated
            alarm = st.aodh.create_alarm(body)
            rule = f"{body['type']}_rule"
            for key, value in body[rule].items():
                if key != "query":  # the API scopes gnocchi queries to the project
                    assert alarm[rule][key] == value, (path.name, key)
            created.append(alarm["alarm_id"])
        assert len(created) == 5

        venv = services.telemetry_venv()
        env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
               "OS_AUTH_TYPE": "aodh-noauth", "AODH_USER_ID": st.aodh.user_id,
               "AODH_PROJECT_ID": st.aodh.project_id, "AODH_ROLES": "admin",
               "AODH_AODH_ENDPOINT": st.aodh.endpoint, **values}
        proc = subprocess.run(["bash", str(AODH_EXAMPLES / "create-alarms.sh")], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        alarms = st.aodh.request("GET", "/v2/alarms")
        for expected in (f"cache-occupancy-{vm}", f"cache-occupancy-project-{project}",
                         f"memory-bandwidth-{vm}", "cache-occupancy-any-instance-prometheus",
                         f"guard-cap-{vm}"):
            matching = [a for a in alarms if a["name"] == expected]
            assert len(matching) == 2, expected  # one from the JSON body, one from the CLI
            assert _rule(matching[0]) == _rule(matching[1]), expected
            for alarm in matching:  # the CLI's are enabled: stop their evaluation
                st.aodh.request("DELETE", f"/v2/alarms/{alarm['alarm_id']}")


# ------------------------------------------------- the real polling agent on a fake host

def prometheus_value(page: str, metric: str, resource: str) -> float | None:
    for line in page.splitlines():
        if line.startswith(metric + "{") and f'resource="{resource}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_polling_agent_to_gnocchi_aodh_and_prometheus(stack: Stack) -> None:
    """ceilometer-polling with this plugin, against the simulator, feeds the whole stack."""
    st = stack
    with fake_compute() as compute, st.diagnostics():
        vm = compute.instance
        hook = st.webhook.url("/polling-agent")
        per_instance = st.aodh.create_alarm(example_alarm(
            "instance-cache-occupancy.json", INSTANCE_ID=vm.uuid, WEBHOOK_URL=hook))
        per_project = st.aodh.create_alarm(example_alarm(
            "project-cache-occupancy.json", PROJECT_ID=vm.project_id, WEBHOOK_URL=hook))
        with services.ceilometer_polling(st.rabbit, shipped_polling_yaml(5, 10),
                                         compute.agent_options) as agent:
            try:
                # -- Gnocchi: the instance resource, its metrics and units
                point = wait_measures(st, "instance", vm.uuid, "cache.occupancy.percent")
                assert point[-1][2] == pytest.approx(HIGH, abs=0.5)
                resource = st.gnocchi.get(f"/v1/resource/instance/{vm.uuid}")
                assert (resource["display_name"], resource["flavor_id"]) == (
                    vm.display_name, vm.flavor_id)
                assert (resource["project_id"], resource["user_id"]) == (
                    vm.project_id, vm.user_id)
                expected_units = {
                    "cache.occupancy": "B", "cache.occupancy.percent": "%",
                    "cpu_l3_cache": "B", "memory.bandwidth.total.bytes": "B",
                    "memory.bandwidth.local.bytes": "B", "memory.bandwidth.total": "B/s",
                    "memory.bandwidth.local": "B/s"}
                def all_metrics() -> dict[str, str] | None:
                    got: dict[str, str] = st.gnocchi.get(
                        f"/v1/resource/instance/{vm.uuid}")["metrics"]
                    return got if set(expected_units) <= set(got) else None

                metrics = wait_for("every instance meter in Gnocchi", all_metrics, 60,
                                   interval=1)
                for meter, unit in expected_units.items():
                    assert st.gnocchi.get(f"/v1/metric/{metrics[meter]}")["unit"] == unit
                # Gnocchi's rate of the cumulative counter; the agent's own rate gauge
                wait_for("a rate:mean point of memory.bandwidth.total.bytes", lambda: any(
                    p[2] > 0 for p in measures(st, "instance", vm.uuid,
                                               "memory.bandwidth.total.bytes", "rate:mean")),
                    60, interval=1)
                assert wait_measures(st, "instance", vm.uuid,
                                     "memory.bandwidth.total")[-1][2] > 0

                # -- the host resource
                size = wait_measures(st, "host", compute.spec.host, "cache.size")
                assert size[-1][2] == float(compute.l3_bytes)
                host = st.gnocchi.get(f"/v1/resource/host/{compute.spec.host}")
                assert host["host_name"] == compute.spec.host
                assert st.gnocchi.get(f"/v1/metric/{host['metrics']['cache.size']}")[
                    "unit"] == "B"

                # -- Prometheus exporter: the same samples, scraped
                page = agent.scrape()
                assert prometheus_value(page, "ceilometer_cache_occupancy_percent",
                                        vm.uuid) == pytest.approx(HIGH, abs=0.5)
                assert prometheus_value(page, "ceilometer_cache_size",
                                        compute.spec.host) == float(compute.l3_bytes)

                # -- Aodh: above 30% -> alarm, webhook called
                for alarm in (per_instance, per_project):
                    wait_for(f"{alarm['name']} -> alarm", lambda a=alarm["alarm_id"]:
                             st.aodh.state(a) == "alarm", 90, interval=1)
                    st.webhook.wait(lambda _c, a=alarm["alarm_id"]:
                                    "alarm" in webhook_states(st, a), 30)

                # -- the instance drops to 5%: the 5-minute mean falls under 30 -> ok
                compute.drop_occupancy()
                wait_for("the exporter to show the drop", lambda: prometheus_value(
                    agent.scrape(), "ceilometer_cache_occupancy_percent",
                    vm.uuid) == pytest.approx(LOW, abs=0.5), 30, interval=1)
                alarm_id = per_instance["alarm_id"]
                wait_for("per-instance alarm -> ok", lambda: st.aodh.state(alarm_id) == "ok",
                         240, interval=2)
                st.webhook.wait(lambda _c: webhook_states(st, alarm_id) == ["alarm", "ok"],
                                30)
            except BaseException:
                print(services.tail(agent.daemon.log, 60))
                raise
            finally:
                for alarm in (per_instance, per_project):
                    with contextlib.suppress(services.ServiceError):
                        st.aodh.request("DELETE", f"/v2/alarms/{alarm['alarm_id']}")


def _rule(alarm: Mapping[str, Any]) -> Mapping[str, Any]:
    rule: Mapping[str, Any] = alarm[f"{alarm['type']}_rule"]
    return rule
