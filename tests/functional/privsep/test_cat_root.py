"""The daemon's CAT side in process, as root, on the FUSE simulator.

What the privsep daemon runs for the guard's requests (``CatRoot``),
without the privsep channel: cap groups by name only, schemata lines the
daemon parses and checks itself, the CLOSID reserve, threads of the named
qemu only and never out of another tool's control group, the root's flock.
tests/functional/security/ makes the same requests as an unprivileged user
through sudo and the real daemon.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ceilometer_cmt.backends.resctrl.fs import RootLock
from ceilometer_cmt.guard import cbm
from ceilometer_cmt.privsep import cat_root
from ceilometer_cmt.privsep.cat_root import CatRoot
from tests.functional.privsep.test_resctrl_root import (
    PREFIX,
    UUID,
    Host,
    simulated_host,
)
from tests.functional.privsep.test_resctrl_root import pytestmark as pytestmark

CAP = PREFIX + "cap-25"
LIBVIRT = "qemu-3-instance-x-vcpus_0"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with simulated_host(tmp_path, "intel-2s", extra_threads=2) as h:
        yield h


def cat(host: Host, **kw: int) -> CatRoot:
    return CatRoot(host.root(), **kw)


def _tasks(path: Path) -> set[int]:
    return {int(t) for t in path.read_text().split()}


def test_cap_group_made_written_filled_emptied_and_removed(host: Host) -> None:
    c, mnt = cat(host), Path(host.sim.mountpoint)
    c.make(CAP)
    c.write_schemata(CAP, ["L3:0=3;1=0x3\n", "L3:1=f"])
    assert cbm.parse_schemata((mnt / CAP / "schemata").read_text()) == {"L3": {0: 3, 1: 0xf}}
    tids = list(host.qemu.tids)
    assert c.move_threads(CAP, UUID, host.qemu.domain_name, tids) == []
    assert _tasks(mnt / CAP / "tasks") == set(tids)
    assert _tasks(mnt / CAP / "mon_groups" / (PREFIX + UUID) / "tasks") == set(tids)
    # back to the default group and the agent's monitor group there
    assert c.move_threads("", UUID, host.qemu.domain_name, tids) == []
    assert _tasks(mnt / CAP / "tasks") == set()
    assert set(tids) <= _tasks(mnt / "mon_groups" / (PREFIX + UUID) / "tasks")
    # threads already in the default group stay where they are
    assert c.move_threads("", UUID, host.qemu.domain_name, tids) == []
    c.remove(CAP)
    assert not (mnt / CAP).exists()


@pytest.mark.parametrize("name", ["", "info", "..", ".", "a/b", f"{CAP}/mon_groups", LIBVIRT,
                                  "mon_groups", PREFIX + "cap-0", PREFIX + "cap-101",
                                  PREFIX + "cap-025", CAP + "\n", CAP + "\x00", "other-cap-25",
                                  "/sys/fs/resctrl", PREFIX + "6f1c2d3e", 25, None])
def test_only_cap_groups_are_made_or_removed(host: Host, name: object) -> None:
    before = sorted(os.listdir(host.sim.mountpoint))
    with pytest.raises(PermissionError, match="rule cap-groups"):
        cat(host).make(name)
    with pytest.raises(PermissionError, match="rule cap-groups"):
        cat(host).remove(name)
    assert sorted(os.listdir(host.sim.mountpoint)) == before


def test_a_foreign_control_group_is_never_removed_nor_written(host: Host) -> None:
    mnt = Path(host.sim.mountpoint)
    os.mkdir(mnt / LIBVIRT)
    before = (mnt / LIBVIRT / "schemata").read_text()
    with pytest.raises(PermissionError, match="rule cap-groups"):
        cat(host).remove(LIBVIRT)
    with pytest.raises(PermissionError, match="rule cap-groups"):
        cat(host).write_schemata(LIBVIRT, ["L3:0=1\n"])
    with pytest.raises(PermissionError, match="rule cap-groups"):
        cat(host).write_schemata("", ["L3:0=1\n"])
    assert (mnt / LIBVIRT).is_dir()
    assert (mnt / LIBVIRT / "schemata").read_text() == before


BAD_LINES = {
    "non-contiguous": ["L3:0=5\n"],
    "outside cbm_mask": ["L3:0=1fffff\n"],
    "zero": ["L3:0=0\n"],
    "unknown domain": ["L3:7=3\n"],
    "MB": ["MB:0=50\n"],
    "L3CODE without CDP": ["L3CODE:0=3\n"],
    "two lines in one": ["L3:0=3\nL3:1=3\n"],
    "huge": ["L3:0=3;" + "1=3;" * 5000 + "\n"],
    "NUL": ["L3:0=3\x00\n"],
    "not hex": ["L3:0=xyz\n"],
    "duplicate domain": ["L3:0=3;0=7\n"],
    "spaced domain": ["L3: 0=3\n"],
    "no colon": ["L3 0=3\n"],
    "empty": ["\n"],
    "no lines": [],
    "too many lines": ["L3:0=3\n"] * 5,
    "not a string": [3],
}


@pytest.mark.parametrize("lines", list(BAD_LINES.values()), ids=list(BAD_LINES))
def test_bad_schemata_lines_are_refused_and_nothing_changes(host: Host,
                                                            lines: list[object]) -> None:
    c, path = cat(host), Path(host.sim.mountpoint) / CAP / "schemata"
    c.make(CAP)
    c.write_schemata(CAP, ["L3:0=3;1=3\n"])
    before = path.read_text()
    with pytest.raises(OSError, match="rule schemata") as e:
        c.write_schemata(CAP, lines)
    assert e.value.errno == errno.EINVAL
    assert path.read_text() == before


def test_min_cbm_bits_and_sparse_masks_are_the_hosts(host: Host, tmp_path: Path) -> None:
    """The rules read info/L3: a Haswell-like min_cbm_bits of 2 refuses one way."""
    c = cat(host)
    infos, default = c.cache_info()
    haswell = {"L3": cbm.CacheInfo(0xfffff, min_cbm_bits=2, shareable_bits=0xc0000)}
    from ceilometer_cmt.privsep.cat_rules import check_schemata_line

    with pytest.raises(OSError, match="Need at least 2 bits"):
        check_schemata_line("L3:0=1\n", haswell, default)
    assert infos["L3"].cbm_mask == 0xfffff and not infos["L3"].sparse_masks


def test_the_closid_reserve_holds(host: Host) -> None:
    """16 CLOSIDs (intel-2s): the default group, a libvirt group, and cap groups
    until half stay free; the reserve is still free afterwards."""
    mnt = Path(host.sim.mountpoint)
    os.mkdir(mnt / LIBVIRT)
    c = cat(host)
    made = []
    with pytest.raises(OSError, match=r"closid_reserve") as e:
        for share in range(1, 101):
            c.make(f"{PREFIX}cap-{share}")
            made.append(share)
    assert e.value.errno == errno.ENOSPC
    assert len(made) == 16 - 1 - 1 - 8  # default, libvirt, the 8 kept
    os.mkdir(mnt / "another-tool")  # the reserve is there for others
    assert (mnt / "another-tool").is_dir()


def test_an_explicit_closid_reserve(host: Host) -> None:
    c = cat(host, closid_reserve=14)  # 15 free: one may go
    c.make(f"{PREFIX}cap-1")
    with pytest.raises(OSError, match="14 are kept free"):
        c.make(f"{PREFIX}cap-2")


def test_threads_of_other_processes_are_refused(host: Host) -> None:
    c = cat(host)
    c.make(CAP)
    with pytest.raises(PermissionError, match="rule threads"):
        c.move_threads(CAP, UUID, host.qemu.domain_name, [os.getpid()])
    assert _tasks(Path(host.sim.mountpoint) / CAP / "tasks") == set()


def test_a_cachetune_thread_is_never_moved(host: Host) -> None:
    """A vCPU thread in libvirt's control group keeps its allocation: neither
    pulled back to the default group nor into a cap group."""
    mnt = Path(host.sim.mountpoint)
    os.mkdir(mnt / LIBVIRT)
    vcpu = host.qemu.tids[1]
    (mnt / LIBVIRT / "tasks").write_text(f"{vcpu}\n")
    c = cat(host)
    c.make(CAP)
    for ctrl in ("", CAP):
        with pytest.raises(PermissionError, match="rule cap-threads"):
            c.move_threads(ctrl, UUID, host.qemu.domain_name, [vcpu])
    assert _tasks(mnt / LIBVIRT / "tasks") == {vcpu}


def test_the_root_flock_is_taken_and_waited_for(host: Host, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    mnt = host.sim.mountpoint
    c = cat(host)
    with RootLock(mnt):  # held by this process: a client's lock around its cycle
        c.make(CAP)
    monkeypatch.setattr(cat_root, "LOCK_WAIT", 0.3)
    other = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({mnt!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert other.pid in cat_root.flock_holders(fd)
        finally:
            os.close(fd)
        with pytest.raises(OSError, match=f"locked .* by process\\(es\\) \\[{other.pid}\\]"):
            c.make(PREFIX + "cap-50")
        assert not (Path(mnt) / (PREFIX + "cap-50")).exists()
    finally:
        other.kill()
        other.wait()
    c.make(PREFIX + "cap-50")
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:  # and released after each request
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_a_line_the_kernel_refuses_fails_with_its_last_cmd_status(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's checks stand before the kernel's; past them (here they are
    bypassed) the kernel's own text reaches the client, and lines before the
    refused one stay written."""
    from ceilometer_cmt.privsep import cat_rules

    c = cat(host)
    c.make(CAP)
    monkeypatch.setattr(cat_rules, "check_schemata_lines",
                        lambda lines, infos, default: list(lines))
    with pytest.raises(OSError, match="L3:0=5: The mask 5 has non-consecutive 1-bits") as e:
        c.write_schemata(CAP, ["L3:1=3\n", "L3:0=5\n"])
    assert e.value.errno == errno.EINVAL
    schemata = cbm.parse_schemata((Path(host.sim.mountpoint) / CAP / "schemata").read_text())
    assert schemata == {"L3": {0: 0xfffff, 1: 3}}
