"""ceilometer-cmt-privsep-helper refuses to start on anything but its exact
command line and root-owned files, before it reads its config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ceilometer_cmt
from ceilometer_cmt.privsep import helper as privsep_helper
from ceilometer_cmt.privsep.helper import CONTEXT, Refused, check_root_owned, parse_argv

HELPER = os.path.join(os.path.dirname(sys.executable), "ceilometer-cmt-privsep-helper")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def argv(conf: str = "/etc/ceilometer/ceilometer-cmt-privsep.conf",
         sock: str = "/tmp/tmpab/privsep.sock") -> list[str]:
    return ["--config-file", conf, "--privsep_context", CONTEXT, "--privsep_sock_path", sock]


def test_exactly_the_command_line_sudo_allows() -> None:
    assert parse_argv(argv()) == ("/etc/ceilometer/ceilometer-cmt-privsep.conf",
                                  "/tmp/tmpab/privsep.sock")
    bad = [
        argv()[2:],  # no config file: oslo's defaults, or none
        argv()[:2] + ["--privsep_context", "ceilometer.privsep.sys_admin_pctxt"] + argv()[4:],
        argv() + ["--config-file", "/tmp/evil.conf"],
        argv() + ["--log-config-append", "/tmp/evil.conf"],
        argv(conf="relative.conf"),
        argv(sock="relative.sock"),
        ["--config-file=/etc/x.conf"] + argv()[2:],
        [],
    ]
    for args in bad:
        with pytest.raises(Refused):
            parse_argv(args)


@needs_root
def test_files_others_can_change_are_refused(tmp_path: Path) -> None:
    base = tmp_path / "etc"
    base.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    conf = base / "privsep.conf"
    conf.write_text("[cmt]\n")
    os.chmod(conf, 0o644)
    check_root_owned(str(conf), "the config file")
    os.chown(conf, 65534, 65534)
    with pytest.raises(Refused, match="owned by uid 65534"):
        check_root_owned(str(conf), "the config file")
    os.chown(conf, 0, 0)
    os.chmod(conf, 0o664)
    with pytest.raises(Refused, match="writable by group or others"):
        check_root_owned(str(conf), "the config file")
    os.chmod(conf, 0o644)
    os.chmod(base, 0o777)  # a directory others may write: conf can be swapped
    with pytest.raises(Refused, match=f"{base} is writable"):
        check_root_owned(str(conf), "the config file")
    os.chmod(base, 0o1777)  # like /tmp: others cannot rename root's entries
    check_root_owned(str(conf), "the config file")
    os.chmod(base, 0o755)
    link = tmp_path / "link.conf"
    link.symlink_to(conf)
    check_root_owned(str(link), "the config file")  # what counts is where it leads
    os.chown(base, 65534, 65534)
    with pytest.raises(Refused, match="owned by uid 65534"):
        check_root_owned(str(link), "the config file")


@needs_root
def test_the_helper_refuses_a_config_the_agent_could_write(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    conf = tmp_path / "privsep.conf"
    conf.write_text("[cmt]\nresctrl_root = /sys/fs/resctrl\n")
    os.chown(conf, 65534, 65534)
    r = subprocess.run([HELPER, *argv(conf=str(conf), sock=str(tmp_path / "s" / "p.sock"))],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r
    assert "refusing to start the privsep daemon" in r.stderr
    assert f"{conf} is owned by uid 65534" in r.stderr, r.stderr
    missing = subprocess.run([HELPER, *argv(conf=str(tmp_path / "none.conf"))],
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "missing or not a regular file" in missing.stderr


def test_the_code_it_runs_is_checked_too() -> None:
    what = dict((w, p) for p, w in privsep_helper.code_paths())
    assert os.path.realpath(what["the ceilometer_cmt package"]) == os.path.realpath(
        os.path.dirname(ceilometer_cmt.__file__))
    assert "the Python interpreter" in what and "the oslo_privsep package" in what
    paths = [p for p, _ in privsep_helper.code_paths()]
    assert all(p in paths for p in sys.path if p and os.path.isdir(p))


def test_the_agent_starts_our_helper_with_the_daemons_config_by_default() -> None:
    """Unset, oslo.privsep's helper_command would be ``sudo privsep-helper`` with the
    agent's own config files: root would read a file the agent's user may write."""
    from oslo_config import cfg

    from ceilometer_cmt.options import DAEMON_CONFIG
    from ceilometer_cmt.privsep import daemon_guard as guard

    conf = cfg.ConfigOpts()
    conf(args=[], project="ceilometer-cmt-test", default_config_files=[])
    try:
        guard.configure(conf)
        assert guard.helper_argv() == [
            "sudo", "ceilometer-cmt-privsep-helper", "--config-file", DAEMON_CONFIG]
        conf.set_override("helper_command", "sudo /opt/x/bin/ceilometer-cmt-privsep-helper "
                          "--config-file /etc/x.conf", group="cmt_privsep")
        guard.configure(conf)
        assert guard.helper_argv()[1:4] == [
            "/opt/x/bin/ceilometer-cmt-privsep-helper", "--config-file", "/etc/x.conf"]
    finally:
        cfg.CONF.clear_override("helper_command", group="cmt_privsep")


@needs_root
def test_trusted_code_owners_come_from_the_root_owned_config_only(tmp_path: Path) -> None:
    """devstack's venv belongs to the stack user: its daemon config may name it."""
    os.chmod(tmp_path, 0o755)
    conf = tmp_path / "privsep.conf"
    conf.write_text("[cmt_privsep]\ntrusted_code_owners = 65534\n")
    os.chmod(conf, 0o644)
    privsep_helper.check_config(str(conf))
    owners = privsep_helper.code_owners(str(conf))
    assert owners == {0, 65534}
    code = tmp_path / "venv"
    code.mkdir(mode=0o755)
    os.chown(code, 65534, 65534)
    privsep_helper.check_code([(str(code), "the venv")], owners)
    with pytest.raises(Refused, match="owned by uid 65534"):
        privsep_helper.check_code([(str(code), "the venv")], frozenset({0}))
    os.chmod(code, 0o775)  # writable by a group: refused whoever owns it
    with pytest.raises(Refused, match="writable by group or others"):
        privsep_helper.check_code([(str(code), "the venv")], owners)
    conf.write_text("[cmt_privsep]\ntrusted_code_owners = no-such-user-cmt\n")
    with pytest.raises(Refused, match="no such user"):
        privsep_helper.code_owners(str(conf))
