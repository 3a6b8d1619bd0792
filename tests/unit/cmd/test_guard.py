"""``ceilometer-cmt guard``: its options from a config file, the JSON
lines and the oslo.messaging notifications (through the in-memory
``test`` driver), a one-cycle run."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import pytest

from ceilometer_cmt.cmd import cli
from ceilometer_cmt.cmd import guard as cmd
from ceilometer_cmt.guard.service import GuardAction, GuardReport
from tests.support.paths import REPO

U1 = "11111111-1111-4111-8111-111111111111"


def conf_file(tmp_path: Any, body: str) -> str:
    path = tmp_path / "ceilometer.conf"
    path.write_text("[DEFAULT]\nhost = compute-7\ntransport_url = fake:/\n"
                    "[oslo_messaging_notifications]\ndriver = test\n" + body)
    return str(path)


def test_options_defaults_and_overrides(tmp_path: Any) -> None:
    conf = cmd.load_conf([conf_file(tmp_path, "")])
    o = cmd.guard_options(conf)
    assert o.dry_run is True  # the default: nothing is written
    assert (o.policy.cap_above, o.policy.cap_after, o.policy.release_below,
            o.policy.release_after, o.policy.cap_share) == (50.0, 3, 30.0, 10, 25)
    assert o.policy.closid_reserve is None  # half of num_closids
    assert o.lock_file == "/run/ceilometer-cmt/guard.lock"
    conf = cmd.load_conf([conf_file(tmp_path, "[cmt]\nresctrl_group_prefix = cc-\n"
                                    "[cmt_guard]\ndry_run = false\ncap_share = 30\n"
                                    "closid_reserve = 2\n")])
    o = cmd.guard_options(conf)
    assert not o.dry_run and o.policy.cap_share == 30 and o.policy.closid_reserve == 2
    assert o.policy.group_name(30) == "cc-cap-30"


P1 = "6f0e3c3cc0a34f0a9e3b4a7c1d2e5f60"
RESULT = GuardReport(1, False, (GuardAction("cap", U1, 25, "holds 60%", (0,), project_id=P1),),
                     allocation={U1: 25.0}, capped=1)


def test_json_lines() -> None:
    assert [json.loads(x) for x in cmd.json_lines(RESULT)] == [
        {"event": "guard", "action": "cap", "uuid": U1, "share": 25, "reason": "holds 60%",
         "dry_run": False}]


def test_notifications_through_the_configured_transport(tmp_path: Any) -> None:
    from oslo_messaging.notify import _impl_test

    _impl_test.reset()
    notes = cmd.Notifications(cmd.load_conf([conf_file(tmp_path, "")]))
    notes.emit(RESULT)
    [(ctxt, message, priority, retry)] = _impl_test.NOTIFICATIONS
    assert priority == "INFO"
    assert message["event_type"] == "cmt.guard.cap"
    assert message["publisher_id"] == "ceilometer-cmt-guard.compute-7"
    assert message["payload"] == {"instance_id": U1, "project_id": P1, "share": 25,
                                  "reason": "holds 60%", "host": "compute-7", "domains": [0],
                                  "dry_run": False}


def as_ceilometer_receives(ctxt: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """A notification the way ceilometer's notification agent hands it to its
    event converter (oslo.messaging's batch listener: the message, its
    context as ``ctxt``, its id and time under ``metadata``)."""
    return {"ctxt": ctxt, "publisher_id": message["publisher_id"],
            "event_type": message["event_type"], "payload": message["payload"],
            "metadata": {"message_id": message["message_id"],
                         "timestamp": message["timestamp"]}}


def events_converter(tmp_path: Any, *appended: str) -> Any:
    """Ceilometer's own event converter over its packaged definitions file,
    with ``appended`` files added at its end as the shipped file says."""
    import ceilometer
    from ceilometer.event import converter
    from oslo_config import cfg
    from stevedore import extension

    packaged = os.path.join(os.path.dirname(ceilometer.__file__), "pipeline", "data",
                            "event_definitions.yaml")
    definitions = tmp_path / "event_definitions.yaml"
    with open(packaged, encoding="utf-8") as f:
        text = f.read()
    for path in appended:
        with open(path, encoding="utf-8") as f:
            text += f.read()
    definitions.write_text(text)
    conf = cfg.ConfigOpts()
    conf.register_opts(converter.OPTS, group="event")
    conf(args=[], project="ceilometer", default_config_files=[])
    conf.set_override("definitions_cfg_file", str(definitions), group="event")
    return converter.setup_events(
        conf, extension.ExtensionManager(namespace="ceilometer.event.trait_plugin"))


EVENT_DEFINITIONS = str(REPO / "etc" / "ceilometer" / "cmt_event_definitions.yaml")


@pytest.mark.parametrize("done", [True, False], ids=["done", "dry-run"])
def test_the_shipped_event_definitions_give_the_traits(tmp_path: Any, done: bool) -> None:
    """The guard's own notifications, through ceilometer's converter: with
    the shipped definitions appended, each becomes an event with the traits
    an Aodh event alarm queries (instance, project) and an operator reads."""
    from dataclasses import replace

    from oslo_messaging.notify import _impl_test

    _impl_test.reset()
    release = GuardAction("release", U1, None, "below 15% for 10 cycles", (0, 1), done=done,
                          project_id=P1)
    report = replace(RESULT, actions=(replace(RESULT.actions[0], done=done), release))
    cmd.Notifications(cmd.load_conf([conf_file(tmp_path, "")])).emit(report)
    ours, packaged = events_converter(tmp_path, EVENT_DEFINITIONS), events_converter(tmp_path)
    for (ctxt, message, _priority, _retry), action in zip(
            _impl_test.NOTIFICATIONS, report.actions, strict=True):
        event = ours.to_event("info", as_ceilometer_receives(ctxt, message))
        assert event.event_type == f"cmt.guard.{action.kind}"
        traits = {t.name: t.value for t in event.traits}
        assert traits == {
            "service": "ceilometer-cmt-guard.compute-7", "instance_id": U1,
            "resource_id": U1, "project_id": P1, "tenant_id": P1, "host": "compute-7",
            "reason": action.reason, "dry_run": int(not done),
            "domains": str(list(action.domains)),
            **({"share": 25} if action.share is not None else {})}
        # ceilometer's packaged definitions alone: its catch-all, default traits only
        bare = packaged.to_event("info", as_ceilometer_receives(ctxt, message))
        assert {t.name for t in bare.traits} == {"service"}


def test_the_cli_names_guard_and_cleanup_guard() -> None:
    assert "guard" in cli.EXTERNAL
    args = cli.build_parser().parse_args(["cleanup", "--guard", "--dry-run"])
    assert args.guard and args.dry_run


def test_a_missing_resctrl_is_a_clear_error(tmp_path: Any, capsys: Any) -> None:
    conf = conf_file(tmp_path, f"[cmt]\nresctrl_root = {tmp_path}/none\n"
                               f"[cmt_guard]\nlock_file = {tmp_path}/guard.lock\n")
    assert cmd.main(["--config-file", conf, "--once"]) == 2
    assert "ceilometer-cmt guard:" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "guard.lock")  # refused before any lock


def test_writes_direct_or_through_the_daemon(tmp_path: Any) -> None:
    from ceilometer_cmt.guard.direct_ops import DirectCatOps
    from ceilometer_cmt.privsep.daemon_guard import GuardedCatOps

    conf = cmd.load_conf([conf_file(tmp_path, "[cmt]\nprivsep = never\n")])
    assert isinstance(cmd.cat_ops(conf, cmd.guard_options(conf)), DirectCatOps)
    conf = cmd.load_conf([conf_file(tmp_path, "[cmt]\nprivsep = always\n")])
    assert isinstance(cmd.cat_ops(conf, cmd.guard_options(conf)), GuardedCatOps)


def test_domain_names_for_cleanup(tmp_path: Any) -> None:
    """cleanup --guard names each guest to the daemon, which checks the move
    against that guest's qemu; without libvirt it gets no names."""
    from ceilometer_cmt.testing.fakehost import make_instances, write_node_xml

    instances = make_instances(2)
    node = write_node_xml(str(tmp_path / "node.xml"), instances)
    conf = cmd.load_conf([conf_file(tmp_path, "")])
    conf.set_override("libvirt_uri", f"test://{node}")
    assert cmd.domain_names(conf) == {i.uuid: i.domain_name for i in instances}
    conf.set_override("libvirt_uri", f"test://{tmp_path}/missing.xml")
    assert cmd.domain_names(conf) == {}


# -- the shipped systemd unit ---------------------------------------------------

UNIT = REPO / "etc" / "systemd" / "ceilometer-cmt-guard.service"


def unit_problems(text: str) -> list[str]:
    """What is wrong with a guard unit: run as root, or an ExecStart the CLI
    does not take (a missing subcommand or option)."""
    import configparser
    import shlex

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    service = parser["Service"]
    problems = []
    user = service.get("User", "root").strip()
    if user in ("", "root", "0"):
        problems.append(f"runs as root (User={user!r}): its writes would skip the daemon")
    if service.get("RuntimeDirectory", "").strip() != "ceilometer-cmt":
        problems.append("no RuntimeDirectory=ceilometer-cmt for the lock file")
    argv = shlex.split(service["ExecStart"])
    if os.path.basename(argv[0]) != "ceilometer-cmt" or argv[1:2] != ["guard"]:
        problems.append(f"ExecStart is not 'ceilometer-cmt guard': {argv[:2]}")
        return problems
    top = cli.build_parser()
    subcommands = next(a.choices for a in top._actions  # noqa: SLF001
                       if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    assert "guard" in subcommands and cli.EXTERNAL["guard"][0] == "ceilometer_cmt.cmd.guard:main"
    try:  # what cli.main hands to guard.main
        parsed = cmd.build_parser().parse_args(argv[2:])
    except SystemExit:
        problems.append(f"'ceilometer-cmt guard' does not take {argv[2:]}")
        return problems
    if not parsed.config_file:
        problems.append("no --config-file")
    return problems


def test_the_shipped_unit_runs_the_guard_unprivileged_with_real_options() -> None:
    assert unit_problems(UNIT.read_text()) == []


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("User=ceilometer", "User=root", "runs as root"),
    ("User=ceilometer", "", "runs as root"),
    ("guard --config-file", "guard --conf-file", "does not take"),
    ("guard --config-file", "gaurd --config-file", "is not 'ceilometer-cmt guard'"),
    ("RuntimeDirectory=ceilometer-cmt", "", "no RuntimeDirectory"),
])
def test_the_unit_check_fails_on_a_bad_unit(old: str, new: str, problem: str) -> None:
    text = UNIT.read_text()
    assert old in text
    found = unit_problems(text.replace(old, new, 1))
    assert any(problem in p for p in found), found


def test_systemd_analyze_verifies_the_unit(tmp_path: Any) -> None:
    import shutil
    import subprocess
    import sys

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on PATH (Debian: systemd)")
    exe = os.path.join(os.path.dirname(sys.executable), "ceilometer-cmt")
    if not os.access(exe, os.X_OK):
        pytest.skip(f"{exe} is not installed: nothing for ExecStart to point at")

    def verify(text: str) -> subprocess.CompletedProcess[str]:
        unit = tmp_path / UNIT.name
        unit.write_text(text.replace("/usr/bin/ceilometer-cmt", exe))
        return subprocess.run([analyze, "verify", str(unit)], capture_output=True,
                              text=True, timeout=60, check=False)

    ok = verify(UNIT.read_text())
    assert ok.returncode == 0 and UNIT.name not in ok.stderr, ok.stderr
    # the same check fails on an unknown key and on a missing command
    bad = verify(UNIT.read_text().replace("User=", "Usr=", 1))
    assert "Unknown key" in bad.stderr, bad.stderr
    bad = verify(UNIT.read_text().replace("/usr/bin/ceilometer-cmt", "/nonexistent/cmt"))
    assert bad.returncode != 0, bad.stderr
