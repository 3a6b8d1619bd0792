"""The privsep daemon as deployments set it up, for the tests that start it
through sudo: its own root-owned config file, the shipped sudoers rule filled
in, and a look at which daemons run."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import textwrap

from ceilometer_cmt.testing.wait import wait_until
from tests.support.paths import REPO

VENV_BIN = os.path.dirname(sys.executable)
HELPER = os.path.join(VENV_BIN, "ceilometer-cmt-privsep-helper")
CONTEXT = "ceilometer_cmt.privsep.entrypoints.cmt_pctxt"
SUDOERS_TEMPLATE = REPO / "etc" / "sudoers.d" / "ceilometer-cmt"
#: the stand-in qemus run this interpreter: the tests' own [cmt_privsep] emulators entry
EMULATOR = os.path.realpath(sys.executable)


def missing_reason() -> str | None:
    """Why the daemon cannot be started through sudo for a throwaway user here."""
    from ceilometer_cmt.simulator import fuse_missing_reason

    if os.geteuid() != 0:
        return "needs root (creates a user, a sudoers file and a FUSE mount)"
    reason = fuse_missing_reason()
    if reason:
        return f"no FUSE: {reason}"
    for tool in ("sudo", "visudo", "useradd", "userdel", "unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages sudo, passwd, util-linux)"
    if not os.path.exists(HELPER):
        return f"{HELPER} is missing (pip install -e . makes it)"
    return None


def write_daemon_config(path: str, *, resctrl_root: str, pid_dir: str,
                        sysfs_root: str = "/sys", extra: str = "") -> str:
    """The daemon's own config, root-owned 0644 (its directory must be root's too)."""
    text = textwrap.dedent(f"""\
        [cmt]
        resctrl_root = {resctrl_root}
        resctrl_group_prefix = ceilometer-
        libvirt_pid_dir = {pid_dir}
        sysfs_root = {sysfs_root}
        [cmt_privsep]
        allow_simulator = true
        emulators = {EMULATOR}
    """) + extra
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)
    return path


def helper_command(conf: str) -> str:
    """The agent's [cmt_privsep] helper_command for that config."""
    return f"sudo {HELPER} --config-file {conf}"


def render_sudoers(user: str, conf: str, tmpdir: str) -> str:
    """etc/sudoers.d/ceilometer-cmt, the rule operators install, filled in."""
    text = SUDOERS_TEMPLATE.read_text()
    assert CONTEXT.replace(".", "[.]") in text  # the rule names the plugin's context

    def regex(path: str) -> str:
        assert all(c.isalnum() or c in "/._-" for c in path), path
        return path.replace(".", "[.]")

    return (text.replace("@USER@", user).replace("@BIN@", VENV_BIN)
            .replace("@CONF@", regex(conf)).replace("@TMPDIR@", regex(tmpdir)))


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def privsep_daemons(marker: str) -> list[int]:
    """Privsep helper processes whose command line mentions ``marker``."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit()
            and "privsep-helper" in (c := _cmdline(int(p))) and marker in c]


def wait_no_daemons(marker: str) -> list[int]:
    """The daemon exits when its client's socket closes; wait for that, then
    kill (and report) whatever is left."""
    left: list[int] = []

    def none_left() -> bool:
        left[:] = privsep_daemons(marker)
        return not left

    with contextlib.suppress(TimeoutError):
        wait_until(none_left, what=f"the {marker} daemons to exit", timeout=20, interval=0.1)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    return left
