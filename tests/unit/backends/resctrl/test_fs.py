"""resctrl files as text: values, mountinfo, the mount check, info, SNC reads, tasks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ceilometer_cmt.backends.resctrl import fs as resctrl
from ceilometer_cmt.backends.resctrl.fs import (
    SIMULATOR_FSTYPE,
    ValueMissing,
    mount_fstype,
    parse_tasks,
    parse_value,
    read_group_event,
    read_info,
    verify_mount,
)
from ceilometer_cmt.errors import BackendUnavailable
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.kernel_trees import build_resctrl, set_value

INTEL_2S = get_topology("intel-2s")
AMD_CCX = get_topology("amd-ccx")
SNC = get_topology("snc")


# ------------------------------------------------------------------ parse_value
@pytest.mark.parametrize("data,value", [
    (b"0\n", 0), (b"1048576\n", 1048576), (b"18446744073709551615", 2**64 - 1),
    (b" 12 ", 12), (b"007\n", 7), (b"12\x1c", 12),
])
def test_parse_value_numbers(data: bytes, value: int) -> None:
    assert parse_value(data) == value


@pytest.mark.parametrize("word", ["Unavailable", "Error", "Unassigned"])
@pytest.mark.parametrize("tail", ["", "\n", "  \n"])
def test_parse_value_no_data_words(word: str, tail: str) -> None:
    with pytest.raises(ValueMissing) as e:
        parse_value((word + tail).encode())
    assert e.value.reason == word


@pytest.mark.parametrize("text", [
    "", "\n", "-1", "+1", "1.0", "0x10", "1e6", "unavailable", "Unavailable1", "1 2",
    "\u0663", "\uff10", "\x00", "0\x00", "12K",
])
def test_parse_value_garbage_is_missing(text: str) -> None:
    with pytest.raises(ValueMissing) as e:
        parse_value(text.encode())
    assert e.value.reason.startswith("malformed value")


@given(st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from(["", "\n", " \n"]))
def test_parse_value_roundtrip(n: int, tail: str) -> None:
    assert parse_value(f"{n}{tail}".encode()) == n


@given(st.binary(max_size=24) | st.text(max_size=24).map(lambda t: t.encode()))
@example(b"12\x1c")
@example(b" 007 \n")
@example(b"Unavailable\n")
@example(b"0")
@example("\u0660".encode())
def test_parse_value_number_or_missing_never_zero_for_words(data: bytes) -> None:
    """A number exactly when the text (ASCII, stripped) is decimal digits: the
    shortcut for the kernel's plain digits never answers otherwise."""
    body = data.decode("ascii", "replace").strip()
    try:
        value = parse_value(data)
    except ValueMissing as e:
        assert not re.fullmatch(r"[0-9]+", body)
        assert e.reason == body if body in resctrl.NO_DATA_WORDS else e.reason
        return
    assert re.fullmatch(r"[0-9]+", body) and value == int(body)


def test_read_value_file_opens_reads_and_closes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = len(os.listdir("/proc/self/fd"))
    _put(str(tmp_path / "v"), "4096\n")
    assert resctrl.read_value_file(str(tmp_path / "v")) == 4096
    _put(str(tmp_path / "v"), "Error\n")
    with pytest.raises(ValueMissing, match="Error"):
        resctrl.read_value_file(str(tmp_path / "v"))
    with pytest.raises(FileNotFoundError):
        resctrl.read_value_file(str(tmp_path / "none"))
    assert len(os.listdir("/proc/self/fd")) == before


# ------------------------------------------------------------------ parse_tasks
@given(st.sets(st.integers(min_value=1, max_value=4194304), max_size=50))
def test_parse_tasks_roundtrip(tids: set[int]) -> None:
    assert parse_tasks("".join(f"{t}\n" for t in sorted(tids))) == tids


def test_parse_tasks_ignores_junk() -> None:
    assert parse_tasks("1\n\nx\n 2 \n-3\n") == {1, 2}


# ---------------------------------------------------------------- mount_fstype
REAL = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
27 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
40 23 0:35 / /sys/fs/resctrl rw,relatime shared:18 - resctrl resctrl rw,mba_MBps
41 27 0:36 / /tmp/with\\040space rw,relatime - tmpfs tmpfs rw,size=1024k
42 27 0:37 / /tmp/back\\134slash\\011tab rw master:3 propagate_from:1 unbindable - tmpfs x rw
43 27 0:38 / /run/cmt/sim rw,nosuid,nodev,relatime - fuse.cmt-resctrl-sim cmt rw,user_id=0
"""


@pytest.mark.parametrize("point,fstype", [
    ("/sys/fs/resctrl", "resctrl"),
    ("/proc", "proc"),
    ("/", "ext4"),
    ("/tmp/with space", "tmpfs"),
    ("/tmp/back\\slash\ttab", "tmpfs"),
    ("/run/cmt/sim", SIMULATOR_FSTYPE),
    ("/tmp/with\\040space", None),  # the escaped form is not a path
    ("/sys/fs", None),
    ("/sys/fs/resctrl/", None),
    ("/sys/fs/resctrl/info", None),
    ("/nowhere", None),
])
def test_mount_fstype_real_shaped(point: str, fstype: str | None) -> None:
    assert mount_fstype(REAL, point) == fstype


def test_mount_fstype_last_mount_wins() -> None:
    stacked = REAL + ("50 40 0:40 / /sys/fs/resctrl rw - tmpfs tmpfs rw\n"
                      "51 50 0:41 / /sys/fs/resctrl rw - resctrl resctrl rw\n")
    assert mount_fstype(stacked, "/sys/fs/resctrl") == "resctrl"
    assert mount_fstype(stacked + "52 51 0:42 / /sys/fs/resctrl rw - tmpfs t rw\n",
                        "/sys/fs/resctrl") == "tmpfs"


@pytest.mark.parametrize("junk", [
    "", "\n\n", "garbage", "1 2 3", "40 23 0:35 / /sys/fs/resctrl rw",  # no separator
    "40 23 0:35 / /sys/fs/resctrl rw - ", "- resctrl resctrl rw", "a b - c",
])
def test_mount_fstype_malformed_lines_are_skipped(junk: str) -> None:
    assert mount_fstype(junk, "/sys/fs/resctrl") is None
    assert mount_fstype(REAL + junk + "\n", "/sys/fs/resctrl") == "resctrl"


def kernel_mangle(path: str) -> str:
    """What the kernel's seq_path(..., " \\t\\n\\\\") does to a mount point."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


_PATH = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=30).map(
    lambda s: "/" + s)
_SAFE_PATH = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs")),
                     min_size=1, max_size=30).map(lambda s: "/" + s.replace("\x85", ""))


@given(_SAFE_PATH | st.sampled_from(["/a b", "/a\tb", "/a\nb", "/a\\b", "/a\\040b"]),
       st.sampled_from(["resctrl", "tmpfs", SIMULATOR_FSTYPE, "ext4"]))
def test_mount_fstype_roundtrip(path: str, fstype: str) -> None:
    line = f"99 27 0:99 / {kernel_mangle(path)} rw,relatime shared:9 - {fstype} src rw\n"
    assert mount_fstype(REAL + line, path) == fstype
    assert mount_fstype(REAL + line, path + "x") is None


@given(_PATH, st.sampled_from(["resctrl", SIMULATOR_FSTYPE]))
@example("/x\r1\x1f2\x1f3\x1f/\x1f/sys/fs/resctrl", SIMULATOR_FSTYPE)
def test_mount_fstype_any_mount_point(path: str, fstype: str) -> None:
    text = f"99 27 0:99 / {kernel_mangle(path)} rw,relatime shared:9 - {fstype} src rw\n"
    assert mount_fstype(text, path) == fstype
    assert mount_fstype(text, "/sys/fs/resctrl") is (fstype if path == "/sys/fs/resctrl"
                                                     else None)


# ---------------------------------------------------------------- verify_mount
def _fake_proc(root: str, mountinfo: str | bytes) -> str:
    os.makedirs(os.path.join(root, "self"), exist_ok=True)
    data = mountinfo.encode() if isinstance(mountinfo, str) else mountinfo
    with open(os.path.join(root, "self", "mountinfo"), "wb") as f:
        f.write(data)
    return root


def test_verify_mount_refuses_plain_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "resctrl"
    build_resctrl(str(d), INTEL_2S)  # looks like resctrl, is not a mount
    with pytest.raises(BackendUnavailable, match="not a mount point") as e:
        verify_mount(str(d))  # the real /proc/self/mountinfo
    # how to get resctrl, on each architecture that has it
    assert f"mount -t resctrl resctrl {os.path.realpath(d)}" in str(e.value)
    for option in ("CONFIG_X86_CPU_RESCTRL", "CONFIG_ARM64_MPAM", "CONFIG_RESCTRL_FS"):
        assert option in str(e.value)


def test_verify_mount_refuses_missing_mountinfo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackendUnavailable, match="cannot read mountinfo"):
        verify_mount(str(tmp_path), proc_root=str(tmp_path / "noproc"))


@contextlib.contextmanager
def tmpfs_at(path: str) -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "cmt-test", path],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)


@pytest.mark.parametrize("name", ["resctrl", "with space", "tab\there", "back\\slash"])
def test_verify_mount_refuses_real_tmpfs(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    with tmpfs_at(str(tmp_path / name)) as mnt:
        build_resctrl(mnt, INTEL_2S)
        # the real mountinfo knows this mount: refused because it is tmpfs
        with pytest.raises(BackendUnavailable, match=r"is a tmpfs mount, not resctrl"):
            verify_mount(mnt)
        os.symlink(mnt, str(tmp_path / "link"))
        with pytest.raises(BackendUnavailable, match=r"is a tmpfs mount"):
            verify_mount(str(tmp_path / "link"))  # resolved through the symlink
        with pytest.raises(BackendUnavailable, match="not a mount point"):
            verify_mount(os.path.join(mnt, "info"))  # inside the mount is not the mount
    assert not os.path.ismount(str(tmp_path / name))


def test_real_mount_cannot_forge_another_mount_point(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "target"
    target.mkdir()
    forger = str(tmp_path / "x\r1\x1f2\x1f3\x1f") + "/\x1f" + str(target)
    with tmpfs_at(forger):
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape",
                  newline="\n") as f:
            text = f.read()
        assert mount_fstype(text, forger) == "tmpfs"
        assert mount_fstype(text, str(target)) is None


def test_verify_mount_forged_line_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "plain"
    target.mkdir()
    forger = f"/home/u/x\r1\x1f2\x1f3\x1f/\x1f{target}"
    proc = _fake_proc(str(tmp_path / "proc"), REAL + (
        f"60 27 0:50 / {kernel_mangle(forger)} rw,nosuid,nodev shared:1 - "
        f"{SIMULATOR_FSTYPE} cmt rw,user_id=1000,group_id=1000\n"))
    with pytest.raises(BackendUnavailable):
        verify_mount(str(target), proc_root=proc)


@pytest.mark.parametrize("fstype,accepted", [
    ("resctrl", True), (SIMULATOR_FSTYPE, True), ("tmpfs", False), ("fuse.other", False),
    ("fuse", False), ("cmt-resctrl-sim", False), ("fuse.cmt-resctrl-sim2", False),
    ("sysfs", False), ("overlay", False),
])
def test_verify_mount_fstypes(tmp_path, fstype: str, accepted: bool) -> None:  # type: ignore[no-untyped-def]
    mnt = tmp_path / "my resctrl"
    mnt.mkdir()
    proc = _fake_proc(str(tmp_path / "proc"), REAL + (
        f"60 27 0:50 / {kernel_mangle(str(mnt))} rw,relatime - {fstype} x rw\n"))
    if accepted:
        assert verify_mount(str(mnt), proc_root=proc) == fstype
    else:
        with pytest.raises(BackendUnavailable, match=f"is a {re.escape(fstype)} mount"):
            verify_mount(str(mnt), proc_root=proc)


def test_verify_mount_non_utf8_mountinfo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = _fake_proc(str(tmp_path / "proc"), b"61 27 0:51 / /odd\xff\xfe rw - ext4 x rw\n"
                      + f"62 27 0:52 / {mnt} rw - resctrl resctrl rw\n".encode())
    assert verify_mount(str(mnt), proc_root=proc) == "resctrl"


# ------------------------------------------------------------------- read_info
def _put(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


@pytest.mark.parametrize("topo", [INTEL_2S, AMD_CCX, SNC], ids=lambda t: t.name)
def test_read_info_fixture(tmp_path, topo) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path), topo)
    info = read_info(root)
    assert info == resctrl.ResctrlInfo(topo.num_rmids, resctrl.EVENTS,
                                       topo.max_threshold_occupancy, topo.num_closids,
                                       f"{topo.cbm_mask:x}")


def test_read_info_cmt_only_and_unknown_features(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path), INTEL_2S, features=("llc_occupancy",))
    assert read_info(root).mon_features == ("llc_occupancy",)
    _put(os.path.join(root, "info", "L3_MON", "mon_features"),
         "llc_occupancy\nmbm_total_bytes\nmbm_total_bytes_config\nmbm_local_bytes_config\n"
         "mbm_local_bytes\n")
    assert read_info(root).mon_features == resctrl.EVENTS


def test_read_info_missing_and_garbage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path), INTEL_2S)
    _put(os.path.join(root, "info", "L3_MON", "num_rmids"), "lots\n")
    os.unlink(os.path.join(root, "info", "L3_MON", "max_threshold_occupancy"))
    with open(os.path.join(root, "info", "L3", "num_closids"), "wb") as f:
        f.write("\u0663\n".encode())
    info = read_info(root)
    assert (info.num_rmids, info.max_threshold_occupancy, info.num_closids) == (None,) * 3
    assert info.mon_features == resctrl.EVENTS
    shutil.rmtree(os.path.join(root, "info"))
    assert read_info(root) == resctrl.ResctrlInfo(None, (), None, None, None)
    assert resctrl.last_cmd_status(root) == "(no info/last_cmd_status)"


def test_last_cmd_status(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path), INTEL_2S)
    _put(os.path.join(root, "info", "last_cmd_status"), "Out of RMIDs\n")
    assert resctrl.last_cmd_status(root) == "Out of RMIDs"


# ------------------------------------------------------------- read_group_event
def test_list_domains(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path), AMD_CCX)
    os.makedirs(os.path.join(root, "mon_data", "mon_MB_00"))
    os.makedirs(os.path.join(root, "mon_data", "mon_L3_xx"))
    assert resctrl.list_domains(root) == [(i, f"mon_L3_{i:02d}") for i in range(8)]


def test_read_group_event_intel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path), INTEL_2S)
    set_value(root, 0, "llc_occupancy", 123456)
    set_value(root, 1, "mbm_total_bytes", 2**50)
    assert read_group_event(root, "mon_L3_00", "llc_occupancy") == 123456
    assert read_group_event(root, "mon_L3_01", "mbm_total_bytes") == 2**50
    assert read_group_event(root, "mon_L3_01", "llc_occupancy") == 0
    for word in resctrl.NO_DATA_WORDS:
        set_value(root, 0, "mbm_local_bytes", word)
        with pytest.raises(ValueMissing, match=word):
            read_group_event(root, "mon_L3_00", "mbm_local_bytes")
    os.unlink(os.path.join(root, "mon_data", "mon_L3_00", "mbm_local_bytes"))
    with pytest.raises(ValueMissing, match="no mbm_local_bytes"):
        read_group_event(root, "mon_L3_00", "mbm_local_bytes")
    with pytest.raises(FileNotFoundError):  # group gone: the backend recreates it
        read_group_event(str(tmp_path / "gone"), "mon_L3_00", "llc_occupancy")


def test_read_group_event_snc(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path), SNC)
    # kernel layout: the top-level file is the sum of the sub-node files
    set_value(root, 0, "llc_occupancy", 300, sub=0)
    set_value(root, 0, "llc_occupancy", 200, sub=1)
    set_value(root, 0, "llc_occupancy", 500)
    assert read_group_event(root, "mon_L3_00", "llc_occupancy") == 500
    # without the top-level file, the sub-nodes are summed
    os.unlink(os.path.join(root, "mon_data", "mon_L3_00", "llc_occupancy"))
    assert read_group_event(root, "mon_L3_00", "llc_occupancy") == 500
    # one sub-node without data: no sum at all (never a partial one)
    set_value(root, 0, "llc_occupancy", "Unavailable", sub=1)
    with pytest.raises(ValueMissing, match="Unavailable"):
        read_group_event(root, "mon_L3_00", "llc_occupancy")
    set_value(root, 0, "llc_occupancy", "12x", sub=1)
    with pytest.raises(ValueMissing, match="malformed"):
        read_group_event(root, "mon_L3_00", "llc_occupancy")
    # a sub-node without the file at all
    set_value(root, 0, "llc_occupancy", 7, sub=1)
    os.unlink(os.path.join(root, "mon_data", "mon_L3_00", "mon_sub_L3_00", "llc_occupancy"))
    with pytest.raises((ValueMissing, FileNotFoundError)):
        read_group_event(root, "mon_L3_00", "llc_occupancy")


def test_find_event_files_then_sum_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """find_event_files names where a value lies (nothing read); sum_event_files
    reads what it named: one top-level file, or every node's file summed."""
    intel = build_resctrl(str(tmp_path / "i"), INTEL_2S)
    dom = os.path.join(intel, "mon_data", "mon_L3_01")
    assert resctrl.find_event_files(dom, "llc_occupancy") == [os.path.join(dom, "llc_occupancy")]
    set_value(intel, 1, "llc_occupancy", 64)
    assert resctrl.sum_event_files(dom, "llc_occupancy", [os.path.join(dom, "llc_occupancy")]) == 64
    snc = build_resctrl(str(tmp_path / "s"), SNC)
    dom = os.path.join(snc, "mon_data", "mon_L3_00")
    os.unlink(os.path.join(dom, "mbm_total_bytes"))
    subs = [os.path.join(dom, f"mon_sub_L3_{n:02d}", "mbm_total_bytes") for n in (0, 1)]
    assert resctrl.find_event_files(dom, "mbm_total_bytes") == subs
    set_value(snc, 0, "mbm_total_bytes", 5, sub=0)
    set_value(snc, 0, "mbm_total_bytes", 6, sub=1)
    assert resctrl.sum_event_files(dom, "mbm_total_bytes", subs) == 11
    os.unlink(subs[1])
    with pytest.raises(ValueMissing, match="no mbm_total_bytes in mon_L3_00/mon_sub_L3_01"):
        resctrl.sum_event_files(dom, "mbm_total_bytes", subs)
    with pytest.raises(FileNotFoundError):  # the top-level file went with its group
        resctrl.sum_event_files(dom, "llc_occupancy", [os.path.join(dom, "gone")])
    with pytest.raises(ValueMissing, match="no mbm_total_bytes in mon_L3_00"):
        resctrl.sum_event_files(dom, "mbm_total_bytes", [])
    shutil.rmtree(os.path.join(dom, "mon_sub_L3_00"))
    shutil.rmtree(os.path.join(dom, "mon_sub_L3_01"))
    assert resctrl.find_event_files(dom, "mbm_total_bytes") == []
    with pytest.raises(FileNotFoundError):
        resctrl.find_event_files(str(tmp_path / "gone"), "llc_occupancy")


def test_read_group_event_snc_missing_sub_file_is_value_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path), SNC)
    os.unlink(os.path.join(root, "mon_data", "mon_L3_00", "llc_occupancy"))
    os.unlink(os.path.join(root, "mon_data", "mon_L3_00", "mon_sub_L3_00", "llc_occupancy"))
    with pytest.raises(ValueMissing):
        read_group_event(root, "mon_L3_00", "llc_occupancy")


# ------------------------------------------------------------ tasks and lock
def test_write_tasks_one_line_per_tid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tasks"
    path.write_text("")
    assert resctrl.write_tasks(str(path), [10, 11, 12]) == []
    assert path.read_text() == "10\n11\n12\n"
    assert resctrl.read_tasks(str(tmp_path)) == {10, 11, 12}


def test_write_tasks_reports_each_failure() -> None:
    # /dev/full fails every write with ENOSPC: each tid is its own write()
    assert resctrl.write_tasks("/dev/full", [1, 2, 3]) == [
        (1, errno.ENOSPC), (2, errno.ENOSPC), (3, errno.ENOSPC)]


def test_root_lock_is_exclusive(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with resctrl.RootLock(str(tmp_path)):
        fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    finally:
        os.close(fd)


def test_groups_listing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_resctrl(str(tmp_path), INTEL_2S)
    os.makedirs(os.path.join(root, "libvirt-cachetune", "mon_groups", "a"))
    os.makedirs(os.path.join(root, "mon_groups", "b"))
    os.symlink(root, os.path.join(root, "link"))
    _put(os.path.join(root, "afile"), "")
    assert resctrl.list_ctrl_groups(root) == ["", "libvirt-cachetune"]
    assert resctrl.list_mon_groups(root, "") == ["b"]
    assert resctrl.list_mon_groups(root, "libvirt-cachetune") == ["a"]
    assert resctrl.list_mon_groups(root, "nonexistent") == []


# ------------------------------------------------- MBM counter assignment writes

def test_direct_ops_write_assignments_one_write_per_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    group = tmp_path / "g"
    group.mkdir()
    (group / resctrl.ASSIGNMENTS_FILE).write_text("")
    writes: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resctrl.os, "write", spy)
        assert resctrl.DirectOps().write_assignments(
            str(group), ["mbm_total_bytes:0=e\n", "mbm_local_bytes:0=_"]) == []
    assert writes == [b"mbm_total_bytes:0=e\n", b"mbm_local_bytes:0=_\n"]
