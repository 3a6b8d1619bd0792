"""The ceilometer-cmt command: probe, cleanup, poll."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from ceilometer_cmt.cmd import cli
from ceilometer_cmt.cmd import poll as pollrun
from ceilometer_cmt.testing.fakehost import make_instances, write_node_xml


def _fixture_args(host):  # type: ignore[no-untyped-def]
    return ["--set", f"resctrl_root={host.resctrl}", "--set", f"sysfs_root={host.sysfs}",
            "--set", "resctrl_verify_mount=false", "--set", f"libvirt_pid_dir={host.pid_dir}"]


def test_probe_json_picks_resctrl_on_a_fixture_tree(host, capsys):  # type: ignore[no-untyped-def]
    rc = cli.main(["probe", "--json", *_fixture_args(host)])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["backend"] == "resctrl"
    assert report["resctrl"]["num_rmids"] == 176
    assert report["resctrl"]["mon_features"] == ["llc_occupancy", "mbm_total_bytes",
                                                 "mbm_local_bytes"]
    assert [d["id"] for d in report["l3_domains"]] == [0, 1]
    assert report["l3_total_bytes"] == sum(c.size for c in host.topo.l3)
    assert report["decisions"][0] == {"backend": "resctrl", "usable": True, "reason": "selected"}
    assert all(not d["usable"] for d in report["decisions"][1:])


def _probe(tmp_path, capsys, preset, build=None):  # type: ignore[no-untyped-def]
    """probe --json and probe on fixture trees of a simulator preset, with
    ``build(root, topo)`` adding to the resctrl tree; (JSON report, text)."""
    return _probe_with(tmp_path, capsys, preset, build, [])


def _probe_with(tmp_path, capsys, preset, build, extra):  # type: ignore[no-untyped-def]
    """:func:`_probe` with ``extra`` arguments (``--set`` pairs)."""
    from ceilometer_cmt.simulator.topology import get_topology
    from tests.conftest import make_host

    topo = get_topology(preset)
    host = make_host(str(tmp_path), topo)
    if build is not None:
        build(host.resctrl, topo)
    cli.main(["probe", "--json", *_fixture_args(host), *extra])
    report = json.loads(capsys.readouterr().out)
    cli.main(["probe", *_fixture_args(host), *extra])
    return report, capsys.readouterr().out


ASSIGN_KEYS = {"mbm_assign_mode", "mbm_counters", "mbm_assign_on_mkdir", "mbm_event_filters"}


def test_probe_reports_mbm_counter_assignment(tmp_path, capsys):  # type: ignore[no-untyped-def]
    from ceilometer_cmt.testing import mbm_assign_tree

    def build(root, topo):  # type: ignore[no-untyped-def]
        mbm_assign_tree.build_abmc_resctrl(root, topo, num_cntrs=32)
        mbm_assign_tree.set_assignments(os.path.join(root, "mon_groups", "pqos-1"), topo,
                                        {"mbm_total_bytes": {0}})
        mbm_assign_tree.recount(root, topo, 32)

    report, text = _probe(tmp_path, capsys, "amd-abmc", build)
    rc = report["resctrl"]
    assert rc["mbm_assign_mode"] == {"current": "mbm_event", "modes": ["mbm_event", "default"]}
    # the default group holds total and local in both domains, pqos-1 total in domain 0
    assert rc["mbm_counters"] == [{"domain": 0, "num": 32, "available": 29},
                                  {"domain": 1, "num": 32, "available": 30}]
    assert rc["mbm_assign_on_mkdir"] is True
    assert rc["mbm_event_filters"]["mbm_local_bytes"] == [
        "local_reads", "local_non_temporal_writes", "local_reads_slow_memory"]
    assert "perf_pkg" not in rc
    assert "mbm_event (modes: mbm_event, default)" in text
    assert re.search(r"MBM counters L3 0 +29 free of 32\n", text), text
    assert re.search(r"mbm_assign_on_mkdir +yes\n", text), text


def test_probe_in_default_mode_has_no_free_counters_to_report(tmp_path, capsys
                                                              ):  # type: ignore[no-untyped-def]
    """num_mbm_cntrs reads in either mode; available_mbm_cntrs and
    mbm_assign_on_mkdir fail (EINVAL) outside mbm_event: null or absent, never 0."""
    from ceilometer_cmt.testing import mbm_assign_tree

    report, text = _probe(tmp_path, capsys, "amd-abmc", lambda root, topo: (
        mbm_assign_tree.build_abmc_resctrl(root, topo, num_cntrs=32, mode="default",
                                           fixed=True)))
    rc = report["resctrl"]
    assert rc["mbm_assign_mode"] == {"current": "default", "modes": ["default"]}
    assert rc["mbm_counters"] == [{"domain": d, "num": 32, "available": None} for d in (0, 1)]
    assert "mbm_assign_on_mkdir" not in rc and "mbm_event_filters" not in rc
    assert re.search(r"MBM counters L3 1 +\? free of 32\n", text), text


def test_probe_reports_aet_telemetry(tmp_path, capsys):  # type: ignore[no-untyped-def]
    from ceilometer_cmt.testing import perf_pkg_tree

    report, text = _probe(tmp_path, capsys, "intel-aet", lambda root, topo: (
        perf_pkg_tree.build_perf_pkg(root, (0, 1), num_rmids=576)))
    pp = report["resctrl"]["perf_pkg"]
    assert pp["mon_features"] == list(perf_pkg_tree.PERF_PKG_EVENTS)
    assert "core_energy" in pp["mon_features"] and "uops_retired" in pp["mon_features"]
    assert pp["num_rmids"] == 576 and pp["packages"] == [0, 1]
    # the smaller of L3_MON's and PERF_PKG_MON's num_rmids
    assert pp["group_limit"] == min(576, report["resctrl"]["num_rmids"])
    # Linux 7.0 shows mbm_assign_mode even without assignable counters
    assert report["resctrl"]["mbm_assign_mode"] == {"current": "default", "modes": ["default"]}
    assert not (ASSIGN_KEYS - {"mbm_assign_mode"}) & set(report["resctrl"])
    assert re.search(r"PERF_PKG \(AET\) events +core_energy activity", text), text
    assert re.search(r"PERF_PKG num_rmids +576\n", text), text


def test_probe_on_an_arm64_mpam_host(tmp_path, capsys):  # type: ignore[no-untyped-def]
    """arm64's /proc/cpuinfo has no vendor_id: the vendor is the CPU
    implementer code. MPAM (doc/kernel-facts-mpam.md): llc_occupancy and
    mbm_total_bytes only, num_rmids = PARTIDs x PMGs, a fixed mbm_event mode
    with one counter per domain held by the default group, one filter."""
    from ceilometer_cmt.testing import kernel_trees, mbm_assign_tree

    proc = str(tmp_path / "proc")

    def build(root, topo):  # type: ignore[no-untyped-def]
        mbm_assign_tree.build_abmc_resctrl(root, topo, num_cntrs=topo.num_mbm_cntrs)
        kernel_trees.build_cpuinfo(proc, topo)

    report, text = _probe_with(tmp_path, capsys, "arm64-mpam", build,
                               ["--set", f"proc_root={proc}"])
    assert report["cpu_vendor"] == "arm64, CPU implementer 0x41"
    assert re.search(r"cpu vendor +arm64, CPU implementer 0x41\n", text), text
    rc = report["resctrl"]
    assert rc["mon_features"] == ["llc_occupancy", "mbm_total_bytes"]
    assert (rc["num_rmids"], rc["num_closids"]) == (512, 32)
    assert rc["mbm_assign_mode"] == {"current": "mbm_event", "modes": ["mbm_event"]}
    assert rc["mbm_counters"] == [{"domain": d, "num": 8, "available": 7} for d in (0, 1)]
    assert list(rc["mbm_event_filters"]) == ["mbm_total_bytes"]
    assert report["backend"] == "resctrl"


def test_probe_reads_the_x86_vendor_id(tmp_path, capsys):  # type: ignore[no-untyped-def]
    from ceilometer_cmt.testing import kernel_trees

    proc = str(tmp_path / "proc")
    report, _ = _probe_with(tmp_path, capsys, "amd-ccx",
                            lambda root, topo: kernel_trees.build_cpuinfo(proc, topo),
                            ["--set", f"proc_root={proc}"])
    assert report["cpu_vendor"] == "AuthenticAMD"


def test_probe_on_a_plain_host_reports_neither(tmp_path, capsys):  # type: ignore[no-untyped-def]
    report, text = _probe(tmp_path, capsys, "intel-2s")
    assert report["backend"] == "resctrl"
    assert not (ASSIGN_KEYS | {"perf_pkg"}) & set(report["resctrl"])
    assert "MBM counters" not in text and "PERF_PKG" not in text
    assert "mbm_assign_mode" not in text


def _no_backend_args(host):  # type: ignore[no-untyped-def]
    """A host with nothing usable, whatever the machine running the tests has:
    the resctrl tree is not a mount point, the sysfs tree has no intel_cqm PMU,
    libvirt's test driver reports no cache data."""
    return ["--set", f"resctrl_root={host.resctrl}", "--set", f"sysfs_root={host.sysfs}",
            "--set", f"libvirt_pid_dir={host.pid_dir}", "--set", "libvirt_uri=test:///default"]


def test_probe_exit_1_and_reasons_without_any_backend(host, capsys
                                                      ):  # type: ignore[no-untyped-def]
    rc = cli.main(["probe", *_no_backend_args(host)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "not a mount point" in out
    assert "chosen backend" in out and "none (per-instance meters off)" in out


def test_console_script_is_installed(host):  # type: ignore[no-untyped-def]
    exe = os.path.join(os.path.dirname(sys.executable), "ceilometer-cmt")
    proc = subprocess.run([exe, "probe", "--json", *_no_backend_args(host)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["backend"] is None


def test_cleanup_stale_only_keeps_running_and_foreign(host, tmp_path, capsys
                                                      ):  # type: ignore[no-untyped-def]
    running = make_instances(1)
    stopped = make_instances(1, running=False, start=2)
    gone = "99999999-9999-4999-8999-999999999999"
    node = write_node_xml(str(tmp_path / "node.xml"), running + stopped)
    mg = os.path.join(host.resctrl, "mon_groups")
    keep = os.path.join(mg, "ceilometer-" + running[0].uuid)
    doomed = [os.path.join(mg, "ceilometer-" + stopped[0].uuid),
              os.path.join(mg, "ceilometer-" + gone)]
    foreign = os.path.join(mg, "pqos-1")
    for d in [keep, *doomed, foreign]:
        os.mkdir(d)  # empty: a plain directory can be rmdir'ed like a resctrl group
    conf = tmp_path / "c.conf"
    conf.write_text(textwrap.dedent(f"""
        [DEFAULT]
        libvirt_uri = test://{node}
    """))
    args = ["cleanup", "--stale-only", "--config-file", str(conf), *_fixture_args(host)]
    assert cli.main([*args, "--dry-run"]) == 0
    assert all(os.path.isdir(d) for d in doomed)
    assert "would remove" in capsys.readouterr().out
    assert cli.main(args) == 0
    assert os.path.isdir(keep) and os.path.isdir(foreign)
    assert not any(os.path.exists(d) for d in doomed)


def test_cleanup_stale_only_removes_nothing_when_libvirt_unreachable(host, tmp_path
                                                                     ):  # type: ignore[no-untyped-def]
    g = os.path.join(host.resctrl, "mon_groups", "ceilometer-" + make_instances(1)[0].uuid)
    os.mkdir(g)
    rc = cli.main(["cleanup", "--stale-only", *_fixture_args(host),
                   "--set", f"libvirt_uri=test+unix:///x?socket={tmp_path}/none.sock"])
    assert rc == 2 and os.path.isdir(g)


def test_poll_json_prints_samples(host, tmp_path, capsys, monkeypatch
                                  ):  # type: ignore[no-untyped-def]
    from ceilometer_cmt.pollsters import runtime

    inst, _, conf = host.cloud(1, host_name="cmp", extra_threads=0)
    monkeypatch.setattr(runtime, "resctrl_ops", lambda conf, settings: host.ops)
    # --set reaches [cmt] before the pollsters load (here: the prefix of our groups)
    assert cli.main(["poll", "--config-file", conf, "--cycles", "2", "--json",
                     "--set", "resctrl_group_prefix=cmt-test-"]) == 0
    assert os.listdir(os.path.join(host.resctrl, "mon_groups")) == ["cmt-test-" + inst[0].uuid]
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    occ = [r for r in rows if r["name"] == "cache.occupancy"]
    assert [r["cycle"] for r in occ] == [1, 2]
    assert occ[0]["resource_metadata"]["cmt_backend"] == "resctrl"
    assert occ[0]["project_id"] == inst[0].project_id
    assert {r["resource_id"] for r in occ} == {inst[0].uuid}
    assert {r["name"] for r in rows if r["resource_id"] == "cmp"} == {
        "cache.size", "cache.monitors.total", "cache.monitors.used",
        "cache.instances.unmonitored", "cache.monitors.removed_by_others",
        "cache.guard.capped"}


def test_poll_without_any_sample_says_so(host, tmp_path, capsys):  # type: ignore[no-untyped-def]
    _, _, conf = host.cloud(0)
    polling = tmp_path / "polling.yaml"
    polling.write_text("sources:\n  - name: other\n    interval: 60\n    meters: [cpu]\n")
    assert cli.main(["poll", "--config-file", conf, "--polling-file", str(polling)]) == 1
    assert "no sample at all" in capsys.readouterr().err


def test_set_accepted_forms_and_errors(capsys):  # type: ignore[no-untyped-def]
    items = ["backend=resctrl", "libvirt_uri=", "resctrl_root=/mnt/a=b",
             "resctrl_verify_mount=false", "log_interval=9", "log_interval=0"]
    assert pollrun.cmt_overrides([pollrun.set_item(i) for i in items]) == {
        ("cmt", "backend"): "resctrl", ("cmt", "libvirt_uri"): "",
        ("cmt", "resctrl_root"): "/mnt/a=b", ("cmt", "resctrl_verify_mount"): "false",
        ("cmt", "log_interval"): "0"}  # the last one wins
    for item, why in [("backend", "no '='"), ("bogus=1", "no [cmt] option 'bogus'"),
                      ("=1", "no [cmt] option ''"),
                      (" backend=perf", "no [cmt] option ' backend'"),
                      ("cmt.backend=perf", "no [cmt] option 'cmt.backend'"),
                      ("backend=nope", "but found 'nope'"),
                      ("log_interval=-1", "greater than or equal to 0"),
                      ("log_interval=", "no value"),
                      ("resctrl_verify_mount=maybe", "boolean value 'maybe'")]:
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            pollrun.set_item(item)
        message = str(exc.value)
        assert message.startswith("takes NAME=VALUE with NAME a [cmt] option (backend, ")
        assert re.search(f"not {re.escape(repr(item))}: .*{re.escape(why)}", message), message
        # every command rejects it the same way, as a usage error (exit 2: probe's
        # exit 1 means "no backend usable"), before reading any config
        for command in ("probe", "poll", "cleanup"):
            with pytest.raises(SystemExit) as same:
                cli.main([command, "--set", "backend=perf", "--set", item])
            assert same.value.code == 2
            assert f"error: argument --set: {message}" in capsys.readouterr().err
