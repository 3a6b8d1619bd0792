"""``ceilometer-cmt gnocchi-resources``: merging our meters into ceilometer's resource map.

The merged file is read back through ceilometer's own Gnocchi publisher code, so
these tests fail if the result would not route our samples to the right resource.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from ceilometer import sample as ceilometer_sample
from ceilometer.publisher import gnocchi as gnocchi_publisher
from oslo_config import cfg

from ceilometer_cmt.cmd import gnocchi_resources as gr

INSTANCE_METERS = [
    "cache.occupancy", "cache.occupancy.percent", "cpu_l3_cache",
    "memory.bandwidth.total.bytes", "memory.bandwidth.local.bytes",
    "memory.bandwidth.total", "memory.bandwidth.local", "cache.allocation.percent",
    "energy.core", "power.core", "cpu.ipc", "cache.llc.miss.stall.ratio",
]
HOST_METERS = ["cache.size", "cache.monitors.total", "cache.monitors.used",
               "cache.instances.unmonitored", "cache.monitors.removed_by_others",
               "cache.guard.capped", "memory.bandwidth.counters.total",
               "memory.bandwidth.counters.available"]


def _entries(defs: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e for e in defs["resources"] if e["resource_type"] == resource_type]


def _occurrences(defs: dict[str, Any], meter: str) -> int:
    return sum(1 for e in defs["resources"] for m in (e.get("metrics") or {}) if m == meter)


def _publisher_map(path: str) -> dict[str, gnocchi_publisher.ResourcesDefinition]:
    """meter -> ResourcesDefinition, exactly as ceilometer's gnocchi publisher builds it."""
    resource_defs, _ = gnocchi_publisher.GnocchiPublisher._load_definitions(
        cfg.ConfigOpts(), None, path)
    return {m: rd for rd in resource_defs for m in rd.metrics}


@pytest.fixture
def default_defs() -> dict[str, Any]:
    return gr.load(gr.default_definitions_path())


def test_default_path_is_the_installed_ceilometer_file() -> None:
    expected = os.path.join(os.path.dirname(gnocchi_publisher.__file__), "data",
                            "gnocchi_resources.yaml")
    assert os.path.samefile(gr.default_definitions_path(), expected)


def test_our_meter_list_matches_the_meter_table() -> None:
    assert gr.our_meter_names() == INSTANCE_METERS + HOST_METERS


def test_packaged_default_lacks_our_meters_and_a_host_entry(
        default_defs: dict[str, Any]) -> None:
    # Why the command exists: without it the publisher drops all our samples.
    for meter in INSTANCE_METERS + HOST_METERS:
        assert _occurrences(default_defs, meter) == 0, meter
    assert _entries(default_defs, "host") == []


def test_merge_places_meters_on_instance_and_host(default_defs: dict[str, Any]) -> None:
    merged = gr.merge(default_defs)
    (instance,) = _entries(merged, "instance")
    for meter in INSTANCE_METERS:
        assert meter in instance["metrics"], meter
    for meter in ("memory.bandwidth.total.bytes", "memory.bandwidth.local.bytes"):
        assert instance["metrics"][meter] == {"archive_policy_name": "ceilometer-low-rate"}
    for meter in ("cache.occupancy", "cache.occupancy.percent", "cpu_l3_cache",
                  "memory.bandwidth.total", "memory.bandwidth.local",
                  "cache.allocation.percent"):
        assert instance["metrics"][meter] == {"archive_policy_name": "ceilometer-cmt-low"}
    policies = {p["name"]: p for p in merged["archive_policies"]}
    assert policies["ceilometer-cmt-low"]["aggregation_methods"] == ["mean", "max"]
    # same resolution as ceilometer-low, so alarms use granularity 300 on both
    assert (policies["ceilometer-cmt-low"]["definition"]
            == policies["ceilometer-low"]["definition"])
    # ceilometer's own instance attributes are kept as they were
    assert instance["attributes"] == _entries(default_defs, "instance")[0]["attributes"]
    (host,) = _entries(merged, "host")
    assert list(host["metrics"]) == HOST_METERS
    assert host["attributes"] == {"host_name": "resource_metadata.(host_name|host)"}


def test_merge_keeps_everything_else(default_defs: dict[str, Any]) -> None:
    before = copy.deepcopy(default_defs)
    merged = gr.merge(default_defs)
    assert default_defs == before, "input must not be modified"
    assert merged["archive_policies"][:-1] == before["archive_policies"]
    assert merged["archive_policies"][-1]["name"] == "ceilometer-cmt-low"
    assert merged["archive_policy_default"] == before["archive_policy_default"]
    for entry in before["resources"]:
        if entry["resource_type"] == "instance":
            continue
        assert entry in merged["resources"]
    old_instance = _entries(before, "instance")[0]
    new_instance = _entries(merged, "instance")[0]
    for meter, extra in old_instance["metrics"].items():
        assert new_instance["metrics"][meter] == extra
    assert len(merged["resources"]) == len(before["resources"]) + 1


def test_merge_is_idempotent(default_defs: dict[str, Any]) -> None:
    once = gr.merge(default_defs)
    twice = gr.merge(once)
    assert twice == once
    assert gr.dump(twice) == gr.dump(once)
    for meter in INSTANCE_METERS + HOST_METERS:
        assert _occurrences(twice, meter) == 1, meter


def test_meter_already_mapped_is_not_duplicated_or_changed() -> None:
    base = {"resources": [
        {"resource_type": "instance",
         "metrics": {"cpu": None,
                     "cache.occupancy": {"archive_policy_name": "site-policy"}}},
        {"resource_type": "custom_vm",
         "metrics": {"memory.bandwidth.total.bytes": None}},
    ]}
    merged = gr.merge(base)
    assert _occurrences(merged, "cache.occupancy") == 1
    assert merged["resources"][0]["metrics"]["cache.occupancy"] == {
        "archive_policy_name": "site-policy"}
    assert _occurrences(merged, "memory.bandwidth.total.bytes") == 1
    assert "memory.bandwidth.total.bytes" in merged["resources"][1]["metrics"]
    assert gr.misplaced(base) == {"memory.bandwidth.total.bytes": "custom_vm"}


def test_merge_into_a_file_without_instance_or_resources() -> None:
    merged = gr.merge({"archive_policy_default": "ceilometer-low"})
    (instance,) = _entries(merged, "instance")
    assert list(instance["metrics"]) == INSTANCE_METERS
    assert [p["name"] for p in merged["archive_policies"]] == ["ceilometer-cmt-low"]
    # a fresh instance entry carries the attributes gnocchi's instance type requires
    assert {"host", "display_name", "flavor_id"} <= set(instance["attributes"])
    (host,) = _entries(merged, "host")
    assert "host_name" in host["attributes"]


def test_existing_archive_policy_of_that_name_is_kept() -> None:
    site_policy = {"name": "ceilometer-cmt-low", "aggregation_methods": ["max"],
                   "back_window": 2, "definition": [{"granularity": "1 minute",
                                                     "timespan": "1 day"}]}
    merged = gr.merge({"archive_policies": [site_policy]})
    assert merged["archive_policies"] == [site_policy]


def test_merge_converts_the_old_list_form() -> None:
    merged = gr.merge({"resources": [{"resource_type": "instance", "metrics": ["cpu"]}]})
    metrics = merged["resources"][0]["metrics"]
    assert metrics["cpu"] is None
    assert metrics["memory.bandwidth.local.bytes"] == {
        "archive_policy_name": "ceilometer-low-rate"}


def test_existing_host_entry_gets_our_meters_and_keeps_its_attributes() -> None:
    base = {"resources": [{"resource_type": "host", "metrics": {"hardware.cpu.load.1min": None},
                           "attributes": {"host_name": "resource_metadata.resource_url"}}]}
    (host,) = _entries(gr.merge(base), "host")
    assert list(host["metrics"]) == ["hardware.cpu.load.1min"] + HOST_METERS
    assert host["attributes"] == {"host_name": "resource_metadata.resource_url"}


@pytest.mark.parametrize("bad", [
    [], "text", {"resources": {"instance": {}}}, {"resources": [{"metrics": {}}]},
    {"archive_policies": {"name": "x"}},
])
def test_merge_rejects_malformed_definitions(bad: Any) -> None:
    with pytest.raises(ValueError):
        gr.merge(bad)


def test_ceilometer_publisher_routes_our_samples(tmp_path: Path) -> None:
    path = tmp_path / "gnocchi_resources.yaml"
    path.write_text(gr.merged_text())
    by_meter = _publisher_map(str(path))
    for meter in INSTANCE_METERS:
        assert by_meter[meter].cfg["resource_type"] == "instance"
    for meter in HOST_METERS:
        assert by_meter[meter].cfg["resource_type"] == "host"
    assert by_meter["memory.bandwidth.total.bytes"].metrics[
        "memory.bandwidth.total.bytes"]["archive_policy_name"] == "ceilometer-low-rate"
    assert by_meter["cache.occupancy.percent"].metrics[
        "cache.occupancy.percent"]["archive_policy_name"] == "ceilometer-cmt-low"
    assert by_meter["cache.size"].metrics["cache.size"]["archive_policy_name"] == (
        "ceilometer-low")  # the file's default
    _, policies = gnocchi_publisher.GnocchiPublisher._load_definitions(
        cfg.ConfigOpts(), None, str(path))
    # the publisher creates every listed policy in Gnocchi on its first publish
    assert "ceilometer-cmt-low" in [p["name"] for p in policies]
    # ceilometer's own meters still routed
    assert by_meter["cpu"].cfg["resource_type"] == "instance"
    assert by_meter["compute.node.cpu.percent"].cfg["resource_type"] == "nova_compute"

    host_sample = ceilometer_sample.Sample(
        name="cache.size", type="gauge", unit="B", volume=100, user_id=None,
        project_id=None, resource_id="compute-1",
        resource_metadata={"host": "compute-1", "cache_domains": []})
    assert by_meter["cache.size"].sample_attributes(host_sample) == {"host_name": "compute-1"}

    vm_sample = ceilometer_sample.Sample(
        name="cache.occupancy.percent", type="gauge", unit="%", volume=42.0,
        user_id="u", project_id="p", resource_id="8c2b1f8e-8f3a-4f2e-9c55-0d7f0b2b2a11",
        resource_metadata={"display_name": "vm1", "host": "compute-1",
                           "flavor": {"id": "f1", "name": "m1.small"},
                           "instance_type": "m1.small"})
    attrs = by_meter["cache.occupancy.percent"].sample_attributes(vm_sample)
    assert attrs["host"] == "compute-1"
    assert attrs["display_name"] == "vm1"
    assert attrs["flavor_id"] == "f1"


def test_main_prints_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert gr.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ")
    assert yaml.safe_load(out) == gr.merge(gr.load(gr.default_definitions_path()))


def test_main_in_place_twice_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "gnocchi_resources.yaml"
    path.write_text(Path(gr.default_definitions_path()).read_text())
    path.chmod(0o640)
    assert gr.main(["--base", str(path), "-o", str(path)]) == 0
    first = path.read_text()
    assert gr.main(["--base", str(path), "--output", str(path)]) == 0
    assert path.read_text() == first
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["gnocchi_resources.yaml"]


def test_main_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources: [\n")
    assert gr.main(["--base", str(bad)]) == 1
    assert gr.main(["--base", str(tmp_path / "missing.yaml")]) == 1
    bad.write_text("- just a list\n")
    assert gr.main(["--base", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("ceilometer-cmt gnocchi-resources:") == 3


def test_main_warns_about_misplaced_meters(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "site.yaml"
    base.write_text(yaml.safe_dump({"resources": [
        {"resource_type": "nova_compute", "metrics": {"cache.size": None}}]}))
    assert gr.main(["--base", str(base)]) == 0
    captured = capsys.readouterr()
    assert "cache.size is already mapped to resource type 'nova_compute'" in captured.err
    merged = yaml.safe_load(captured.out)
    assert _occurrences(merged, "cache.size") == 1


def doc_table(text: str) -> set[tuple[str, str, str | None]]:
    """(meter, resource type, archive policy or None for the file's default)
    from the Gnocchi table of doc/telemetry-pipeline.md."""
    import re

    rows = text[text.index("| meters | Gnocchi resource type | archive policy |"):].splitlines()
    out = set()
    for row in rows[2:]:
        if not row.startswith("|"):
            break
        meters_cell, type_cell, policy_cell = (c.strip() for c in row.strip("|").split("|"))
        rtype = re.findall(r"`([^`]+)`", type_cell)[0]
        policy = (None if policy_cell.startswith("the file's default")
                  else re.findall(r"`([^`]+)`", policy_cell)[0])
        out |= {(m, rtype, policy) for m in re.findall(r"`([^`]+)`", meters_cell)}
    return out


def table_of(resources: Any) -> set[tuple[str, str, str | None]]:
    return {(name, r.resource_type, spec.get("archive_policy_name"))
            for r in resources for name, spec in r.metrics.items()}


def test_the_pipeline_doc_maps_each_meter_as_the_merge_does() -> None:
    """doc/telemetry-pipeline.md tells an operator where each meter lands in
    Gnocchi; it is written by hand, so it is held to the merge's own table."""
    from tests.support.paths import REPO

    text = (REPO / "doc" / "telemetry-pipeline.md").read_text(encoding="utf-8")
    assert doc_table(text) == table_of(gr.OUR_RESOURCES)


def test_the_doc_table_check_can_fail() -> None:
    text = ("| meters | Gnocchi resource type | archive policy |\n|---|---|---|\n"
            "| gauges: `a`, `b` | `instance` (uuid) | `low`: 5-minute points |\n"
            "| host: `c` | `host` | the file's default (`ceilometer-low`) |\n\nafter\n")
    assert doc_table(text) == {("a", "instance", "low"), ("b", "instance", "low"),
                               ("c", "host", None)}
    assert doc_table(text) != table_of(gr.OUR_RESOURCES)
