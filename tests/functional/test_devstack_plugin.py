"""devstack/plugin.sh run by bash with devstack's functions stubbed: what it writes.

devstack itself cannot run here; this checks the plugin's own work: the [cmt]
and privsep options, the merged polling.yaml (idempotent, wildcard sources
exclude our meters) and the merged gnocchi_resources.yaml, through the real
ceilometer-cmt CLI and ceilometer's real polling-source parser.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from ceilometer.polling.manager import PollingSource

from ceilometer_cmt.cmd import gnocchi_resources
from tests.support.paths import REPO

BIN = Path(sys.executable).parent

STUBS = r"""
function is_service_enabled {
    local s
    for s in "$@"; do [[ ,$ENABLED_SERVICES, == *,$s,* ]] && return 0; done
    return 1
}
function iniset { echo "$2|$3|$4" >> "$INISET_LOG"; }
function setup_develop { echo "$*" >> "$DEVELOP_LOG"; }
function echo_summary { echo "summary: $*"; }
function get_python_exec_prefix { echo "$FAKE_BIN"; }
function sudo { "$@"; }  # the test runs as root; the plugin's sudo calls act here
function run_process { echo "run_process|$1|$2" >> "$PROCESS_LOG"; }
function stop_process { echo "stop_process|$1" >> "$PROCESS_LOG"; }
"""

ALL_METERS = [m for r in gnocchi_resources.OUR_RESOURCES for m in r.metrics]


def run_plugin(tmp: Path, *phase: str, services: str,
               **env_extra: str) -> subprocess.CompletedProcess[str]:
    script = (STUBS + f"source {REPO}/devstack/settings\n"
              + f"source {REPO}/devstack/plugin.sh {' '.join(phase)}\n")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DEST": str(tmp / "dest"),
           "CEILOMETER_CMT_DIR": str(REPO), "CEILOMETER_CONF": str(tmp / "ceilometer.conf"),
           "CEILOMETER_CONF_DIR": str(tmp), "CEILOMETER_BIN_DIR": str(BIN),
           "FAKE_BIN": str(BIN), "PYTHON": sys.executable, "ENABLED_SERVICES": services,
           "INISET_LOG": str(tmp / "iniset.log"),
           "PROCESS_LOG": str(tmp / "process.log"), "DATA_DIR": str(tmp / "data"),
           "DEVELOP_LOG": str(tmp / "develop.log"),
           "STACK_USER": "stack",
           "CEILOMETER_CMT_PRIVSEP_CONF": str(tmp / "etc" / "privsep.conf")}
    env.update(env_extra)
    proc = subprocess.run(["bash", "-euc", script], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def test_install_on_compute_and_notification_nodes_only(tmp_path: Path) -> None:
    run_plugin(tmp_path, "stack", "install", services="n-cpu,ceilometer-acompute")
    assert (tmp_path / "develop.log").read_text().split() == [str(REPO), "libvirt"]
    (tmp_path / "develop.log").unlink()
    run_plugin(tmp_path, "stack", "install", services="key,glance")
    assert not (tmp_path / "develop.log").exists()


def test_compute_post_config(tmp_path: Path) -> None:
    polling = tmp_path / "polling.yaml"
    polling.write_text(yaml.safe_dump({"sources": [
        {"name": "some_pollsters", "interval": 300, "meters": ["*"]},
        {"name": "cpu_source", "interval": 600, "meters": ["cpu"]}]}))
    for _ in range(2):  # idempotent
        run_plugin(tmp_path, "stack", "post-config", services="ceilometer-acompute")
    settings = [line.split("|", 2) for line in
                (tmp_path / "iniset.log").read_text().splitlines()]
    assert ["cmt", "backend", "auto"] in settings
    assert ["cmt", "privsep", "always"] in settings
    helper = next(v for s, k, v in settings if (s, k) == ("cmt_privsep", "helper_command"))
    daemon_conf = tmp_path / "etc" / "privsep.conf"
    assert helper == f"sudo {BIN}/ceilometer-cmt-privsep-helper --config-file {daemon_conf}"
    # the daemon's own config: root-owned, read-only for others, not the agent's
    st = daemon_conf.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o644)
    assert daemon_conf.read_text() == "[cmt_privsep]\ntrusted_code_owners = stack\n"

    sources = yaml.safe_load(polling.read_text())["sources"]
    assert [s["name"] for s in sources] == ["some_pollsters", "cpu_source", "cmt_cache",
                                            "cmt_host"]
    by_name = {s["name"]: s for s in sources}
    assert by_name["cmt_cache"]["interval"] == 60
    assert by_name["cmt_host"]["interval"] == 600
    assert by_name["cmt_cache"]["meters"] + by_name["cmt_host"]["meters"] == ALL_METERS
    assert by_name["some_pollsters"]["meters"] == ["*"] + ["!" + m for m in ALL_METERS]
    assert by_name["cpu_source"]["meters"] == ["cpu"]
    # ceilometer's own parser: every meter is polled by exactly one source
    parsed = [PollingSource(s) for s in sources]
    for meter in ALL_METERS + ["cpu", "memory.usage"]:
        owners = [p.name for p in parsed if p.support_meter(meter)]
        assert len(owners) == (2 if meter == "cpu" else 1), (meter, owners)
    assert not (tmp_path / "gnocchi_resources.yaml").exists()


def test_compute_post_config_without_polling_yaml(tmp_path: Path) -> None:
    run_plugin(tmp_path, "stack", "post-config", services="ceilometer-acompute")
    sources = yaml.safe_load((tmp_path / "polling.yaml").read_text())["sources"]
    assert [s["name"] for s in sources] == ["cmt_cache", "cmt_host"]


def test_notification_post_config_merges_gnocchi_resources(tmp_path: Path) -> None:
    resources = tmp_path / "gnocchi_resources.yaml"
    run_plugin(tmp_path, "stack", "post-config", services="ceilometer-anotification")
    first = resources.read_text()
    assert yaml.safe_load(first) == gnocchi_resources.merge(
        gnocchi_resources.load(gnocchi_resources.default_definitions_path()))
    run_plugin(tmp_path, "stack", "post-config", services="ceilometer-anotification")
    assert resources.read_text() == first
    assert not (tmp_path / "polling.yaml").exists()
    assert not (tmp_path / "iniset.log").exists()


OUR_EVENTS = REPO / "etc" / "ceilometer" / "cmt_event_definitions.yaml"


def packaged_event_definitions() -> Path:
    import ceilometer

    return Path(ceilometer.__file__).parent / "pipeline" / "data" / "event_definitions.yaml"


def test_notification_post_config_appends_the_guards_event_definitions(
        tmp_path: Path) -> None:
    """Without a file in the config dir: ceilometer's packaged definitions,
    then ours, once however often post-config runs."""
    events = tmp_path / "event_definitions.yaml"
    for _ in range(2):
        run_plugin(tmp_path, "stack", "post-config", services="ceilometer-anotification")
        assert yaml.safe_load(events.read_text()) == (
            yaml.safe_load(packaged_event_definitions().read_text())
            + yaml.safe_load(OUR_EVENTS.read_text()))


def test_a_sites_event_definitions_are_kept(tmp_path: Path) -> None:
    site = [{"event_type": "site.thing.*", "traits": {"x": {"fields": "payload.x"}}}]
    events = tmp_path / "event_definitions.yaml"
    events.write_text(yaml.safe_dump(site).rstrip("\n"))  # no newline at its end
    run_plugin(tmp_path, "stack", "post-config", services="ceilometer-anotification")
    assert yaml.safe_load(events.read_text()) == site + yaml.safe_load(OUR_EVENTS.read_text())


def test_guard_enabled_is_configured_started_and_undone(tmp_path: Path) -> None:
    """``enable_service ceilometer-cmt-guard``: [cmt_guard] in the agent's
    config, ``ceilometer-cmt guard`` started by run_process (as devstack's
    user: its writes go through the daemon, [cmt] privsep = always), and
    unstack stops it and runs ``cleanup --guard``. ``ceilometer-cmt`` is a
    stand-in that logs its arguments (the real one would clean this host)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    cli_log = tmp_path / "cli.log"
    (fake / "ceilometer-cmt").write_text(f'#!/bin/sh\necho "$*" >> {cli_log}\n')
    (fake / "ceilometer-cmt").chmod(0o755)
    services = "n-cpu,ceilometer-acompute,ceilometer-cmt-guard"
    conf = tmp_path / "ceilometer.conf"
    for phase in (("stack", "post-config"), ("stack", "extra")):
        run_plugin(tmp_path, *phase, services=services, CEILOMETER_BIN_DIR=str(fake))
    settings = [line.split("|", 2) for line in
                (tmp_path / "iniset.log").read_text().splitlines()]
    assert ["cmt", "privsep", "always"] in settings
    assert ["cmt_guard", "dry_run", "True"] in settings  # CEILOMETER_CMT_GUARD_DRY_RUN
    assert ["cmt_guard", "lock_file", f"{tmp_path}/data/ceilometer-cmt/guard.lock"] in settings
    assert (tmp_path / "process.log").read_text().splitlines() == [
        f"run_process|ceilometer-cmt-guard|{fake}/ceilometer-cmt guard --config-file {conf}"]
    # the command run_process starts exists with these options
    from ceilometer_cmt.cmd import guard

    assert guard.build_parser().parse_args(["--config-file", str(conf)]).config_file == [
        str(conf)]

    (tmp_path / "process.log").unlink()
    run_plugin(tmp_path, "unstack", services=services, CEILOMETER_BIN_DIR=str(fake))
    assert (tmp_path / "process.log").read_text().splitlines() == [
        "stop_process|ceilometer-cmt-guard"]
    assert cli_log.read_text().splitlines() == [
        f"cleanup --guard --config-file {conf}", f"cleanup --config-file {conf}"]


def test_guard_not_enabled_is_neither_configured_nor_started(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ceilometer-cmt").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/cli.log\n')
    (fake / "ceilometer-cmt").chmod(0o755)
    for phase in (("stack", "post-config"), ("stack", "extra"), ("unstack",)):
        run_plugin(tmp_path, *phase, services="ceilometer-acompute",
                   CEILOMETER_BIN_DIR=str(fake))
    assert not any(line.startswith("cmt_guard|") for line in
                   (tmp_path / "iniset.log").read_text().splitlines())
    assert not (tmp_path / "process.log").exists()
    assert (tmp_path / "cli.log").read_text().split("\n")[0].split()[:2] == [
        "cleanup", "--config-file"]
