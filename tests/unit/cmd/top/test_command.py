"""``ceilometer-cmt top``: the view built from samples of real polling cycles.

Samples come from ceilometer's own polling manager (pollrun) on a
kernel-format resctrl fixture tree with stand-in qemu processes and a
libvirt test-driver host, as in test_polling_cycle.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile

import pytest
from rich.console import Console

from ceilometer_cmt.cmd import cli, top
from ceilometer_cmt.cmd import poll as pollrun
from ceilometer_cmt.pollsters import runtime
from ceilometer_cmt.readings import ALL_DOMAINS
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.kernel_trees import set_value

MiB = 1024 * 1024
#: the size of each L3 of the fixture host (the ``host`` fixture: intel-2s)
L3 = get_topology("intel-2s").l3[0].size
#: b's share of socket 0 (12 MiB), as top shows it
B_PERCENT = f"{100 * 12 * MiB / L3:.1f}%"


@pytest.fixture
def cloud(host, monkeypatch):  # type: ignore[no-untyped-def]
    running, stopped, conf = host.cloud(3, 1)
    # resctrl writes reach the fixture tree through the kernel stand-in
    monkeypatch.setattr(runtime, "resctrl_ops", lambda conf, settings: host.ops)
    return host, running, stopped, conf


def group(host, inst):  # type: ignore[no-untyped-def]
    return os.path.join(host.resctrl, "mon_groups", "ceilometer-" + inst.uuid)


def hardware_reports(host, a, b, c):  # type: ignore[no-untyped-def]
    """What the fixture 'hardware' shows after the first cycle made the groups."""
    set_value(group(host, a), 0, "llc_occupancy", 2 * MiB)
    set_value(group(host, a), 1, "llc_occupancy", 3 * MiB)
    set_value(group(host, b), 0, "llc_occupancy", 12 * MiB)  # B_PERCENT of socket 0
    set_value(group(host, b), 1, "llc_occupancy", 1 * MiB)
    set_value(group(host, b), 0, "mbm_total_bytes", 8_000_000)
    set_value(group(host, b), 0, "mbm_local_bytes", 6_000_000)
    set_value(group(host, c), 0, "llc_occupancy", "Unavailable")
    set_value(group(host, c), 1, "llc_occupancy", 1 * MiB)


def two_cycles(cloud):  # type: ignore[no-untyped-def]
    host, (a, b, c), _stopped, conf = cloud
    with pollrun.polling_agent([conf]) as agent:
        pollrun.run_cycles(agent, 1)
        hardware_reports(host, a, b, c)
        return pollrun.run_cycles(agent, 1)[0]


def test_view_from_real_samples(cloud):  # type: ignore[no-untyped-def]
    _host, (a, b, c), (stopped,), _conf = cloud
    view = top.build_view(two_cycles(cloud))

    assert (view.host, view.backend) == ("compute-1", "resctrl")
    assert view.cache_size == 2 * L3 and dict(view.domain_sizes) == {0: L3, 1: L3}
    assert (view.monitors_total, view.monitors_used, view.unmonitored) == (176, 4, 0)
    # the noisy one first, the one without occupancy last, the stopped one absent
    assert [r.uuid for r in view.rows] == [b.uuid, a.uuid, c.uuid]
    rb, ra, rc = view.rows
    assert (rb.name, rb.domain_name) == (b.display_name, b.domain_name)
    assert rb.occupancy == 13 * MiB and dict(rb.domains) == {0: 12 * MiB, 1: 1 * MiB}
    assert rb.occupancy_percent == pytest.approx(100.0 * 12 * MiB / L3)
    assert rb.mbm_total_bytes == 8_000_000 and rb.mbm_local_bytes == 6_000_000
    assert rb.mbm_total_rate is not None and rb.mbm_total_rate > 0
    assert rb.mbm_local_rate is not None and rb.mbm_local_rate > 0
    assert rb.monitored and rb.status == "monitored"
    # a's busiest domain is socket 1
    assert ra.occupancy_percent == pytest.approx(100.0 * 3 * MiB / L3)
    assert ra.mbm_total_rate == 0.0  # its counters did not move: a real 0
    # c: one domain Unavailable -> no occupancy at all, never 0; bandwidth still there
    assert (rc.occupancy, rc.occupancy_percent, dict(rc.domains)) == (None, None, {})
    assert rc.mbm_total_bytes == 0 and rc.status == "monitored"
    assert stopped.uuid not in {r.uuid for r in view.rows}


def test_sort_keys_and_rendering(cloud):  # type: ignore[no-untyped-def]
    _host, (a, b, c), _stopped, _conf = cloud
    view = top.build_view(two_cycles(cloud))
    assert [r.uuid for r in top.sort_rows(view.rows, "name")] == [a.uuid, b.uuid, c.uuid]
    assert [r.uuid for r in top.sort_rows(view.rows, "occupancy")] == [b.uuid, a.uuid, c.uuid]
    by_mbm = top.sort_rows(view.rows, "mbm-total")
    assert by_mbm[0].uuid == b.uuid  # the only one whose counter moved

    console = Console(file=io.StringIO(), width=250, color_system=None)
    console.print(top.render(view))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    lines = text.splitlines()
    row_b = next(ln for ln in lines if b.uuid in ln)
    assert b.display_name in row_b and "13.0 MiB" in row_b and B_PERCENT in row_b
    assert f"L3#0 12.0 MiB {B_PERCENT}" in row_b
    row_c = next(ln for ln in lines if c.uuid in ln)
    assert " - " in row_c  # no occupancy shown as "-", not 0
    assert "backend resctrl" in text and "monitors 4/176" in text
    assert lines.index(row_b) < next(i for i, ln in enumerate(lines) if a.uuid in ln)


def test_unmonitored_instance_named_with_reason(cloud):  # type: ignore[no-untyped-def]
    host, (a, b, _c), _stopped, conf = cloud
    host.qemus[1].stop()  # b's qemu died; libvirt still says running
    with pollrun.polling_agent([conf]) as agent:
        poller = top.Poller(agent)
        _samples, view = poller.poll()
    assert view.cycle == 1 and view.unmonitored == 1
    row = next(r for r in view.rows if r.uuid == b.uuid)
    assert not row.monitored and row.reason
    assert row.status == f"not monitored: {row.reason}"
    assert row.name == b.display_name  # from ceilometer's discovery
    assert row.occupancy is None
    assert view.rows[-1].uuid == b.uuid  # no value: last
    doc = top.view_json(view)
    entry = next(i for i in doc["instances"] if i["uuid"] == b.uuid)
    assert entry["monitored"] is False and entry["reason"] == row.reason
    assert next(i for i in doc["instances"] if i["uuid"] == a.uuid)["monitored"] is True


def test_host_wide_domain_percent_against_whole_cache(cloud):  # type: ignore[no-untyped-def]
    """A host-wide backend (perf) reports one domain key: percent of all L3."""
    samples = two_cycles(cloud)
    _host, (_a, b, _c), _stopped, _conf = cloud
    for s in samples:
        if s["resource_id"] == b.uuid and "cache_domains" in s["resource_metadata"]:
            s["resource_metadata"]["cache_domains"] = {str(ALL_DOMAINS): 13 * MiB}
    view = top.build_view(samples)
    row = next(r for r in view.rows if r.uuid == b.uuid)
    assert top.domain_breakdown(view, row) == f"host 13.0 MiB {100 * 13 * MiB / (2 * L3):.1f}%"


def test_once_json_through_the_cli(cloud, capsys):  # type: ignore[no-untyped-def]
    host, (a, b, c), _stopped, conf = cloud
    rc = cli.main(["top", "--config-file", conf, "--once", "--json", "--interval", "0",
                   "--sort", "name", "--set", "log_interval=0"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["host"] == "compute-1" and doc["backend"] == "resctrl"
    assert doc["cycle"] == 2  # two reads, so that bandwidth has a rate
    assert [i["uuid"] for i in doc["instances"]] == [a.uuid, b.uuid, c.uuid]
    first = doc["instances"][0]
    assert first["name"] == a.display_name and first["status"] == "monitored"
    assert first["occupancy_bytes"] == 0 and first["mbm_total_bytes_per_second"] == 0.0
    assert [d["id"] for d in first["domains"]] == [0, 1]
    assert doc["cache"]["domains"] == [{"id": 0, "size": L3}, {"id": 1, "size": L3}]
    assert doc["monitors"] == {"total": 176, "used": 4}


def test_bad_set_and_bad_arguments(cloud, capsys):  # type: ignore[no-untyped-def]
    _host, _running, _stopped, conf = cloud
    for item in ("nonsense", "bogus=1", "backend=nope"):  # the last two were ignored once
        with pytest.raises(SystemExit) as exc:
            top.main(["--config-file", conf, "--once", "--set", item])
        assert exc.value.code == 2
        assert "argument --set: takes NAME=VALUE" in capsys.readouterr().err
    assert top.main(["--config-file", conf, "--cycles", "-1"]) == 2


def test_set_overrides_reach_the_plugin_without_a_file(cloud, capsys, tmp_path, monkeypatch
                                                       ):  # type: ignore[no-untyped-def]
    _host, _running, _stopped, conf = cloud
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # $TMPDIR, for this process
    agents = []
    real_agent = pollrun.polling_agent

    @contextlib.contextmanager
    def polling_agent(config_files, polling_file=None, overrides=None
                      ):  # type: ignore[no-untyped-def]
        with real_agent(config_files, polling_file, overrides) as agent:
            agents.append((list(config_files), overrides, sorted(os.listdir(tmpdir))))
            yield agent

    monkeypatch.setattr(pollrun, "polling_agent", polling_agent)
    rc = cli.main(["top", "--config-file", conf, "--once", "--json", "--interval", "0",
                   "--set", f"resctrl_root={tmp_path}/nothing"])
    assert rc == 0
    [(config_files, overrides, in_tmpdir)] = agents
    # the agent gets the user's config alone, --set as overrides, and top wrote
    # nothing beside the temporary directory of pollrun's own agent settings
    assert config_files == [conf]
    assert overrides == {("cmt", "resctrl_root"): f"{tmp_path}/nothing"}
    assert len(in_tmpdir) == 1 and in_tmpdir[0].startswith("cmt-poll-")
    assert os.listdir(tmpdir) == []
    doc = json.loads(capsys.readouterr().out)
    # no resctrl there: per-instance meters are off, only the host's cache size remains
    assert doc["instances"] == [] and doc["backend"] is None
    assert doc["cache"]["size"] == 2 * L3


def test_narrow_terminal_fits(cloud):  # type: ignore[no-untyped-def]
    _host, (a, b, c), _stopped, _conf = cloud
    view = top.build_view(two_cycles(cloud))
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(top.render(view, width=80))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    table = [ln for ln in lines if "\u2026" in ln]
    assert len(table) == 3 and all(len(ln) <= 80 for ln in lines)
    # the demo-style uuids share their first 8 characters: the tail tells them apart
    assert b.uuid[-8:] in table[0] and b.display_name in table[0] and " ok" in table[0]
    assert B_PERCENT in table[0] and "L3#0" not in table[0]  # per-domain column left out
