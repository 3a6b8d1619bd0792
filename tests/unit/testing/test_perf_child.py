"""testing.perf_child: the child perf counts, running perf_child_program."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from ceilometer_cmt.testing import perf_child_program
from ceilometer_cmt.testing.perf_child import Child


def _state(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2:][:1].decode()


def non_stdlib_imports(source: str) -> list[str]:
    """The top-level modules ``source`` imports that are not the standard library's."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return sorted(n for n in names if n.split(".")[0] not in sys.stdlib_module_names)


def test_the_program_imports_only_the_standard_library() -> None:
    """It runs with ``-I -S``: no site-packages, not even the plugin."""
    source = Path(perf_child_program.__file__).read_text(encoding="utf-8")
    assert non_stdlib_imports(source) == []


def test_the_import_check_can_fail() -> None:
    assert non_stdlib_imports(
        "import os\nfrom ceilometer_cmt.testing import wait\nfrom . import x\nimport psutil\n"
    ) == [".", "ceilometer_cmt.testing", "psutil"]


def test_it_starts_from_any_directory_and_names_its_guest_like_qemu(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with Child("instance-0000abcd", str(tmp_path)) as c:
        with open(f"/proc/{c.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")[:-1]
        assert argv[-2:] == [b"-name", b"guest=instance-0000abcd,debug-threads=on"]
        assert (tmp_path / "instance-0000abcd.pid").read_text() == f"{c.pid}\n"
        assert c.cmd("exit") == "exit"
    assert not (tmp_path / "instance-0000abcd.pid").exists()


def test_spawned_threads_burn_and_sleep_on_command() -> None:
    with Child() as c:
        tid = c.spawn("w")
        assert c.tids() == {c.pid, tid}
        assert c.cmd("tburn w") == "tburn"
        for _ in range(100):  # a spinning thread is running or runnable
            assert _state(c.pid, tid) == "R"
        assert c.cmd("tstop w") == "tstop"
        c.wait_asleep(tids={tid})
        assert c.cmd("what") == "unknown"


def test_burn_keeps_the_main_thread_running_until_the_next_command() -> None:
    with Child() as c:
        c.burn()
        assert all(_state(c.pid, c.pid) == "R" for _ in range(100))
        c.sleep()  # answers, then waits until every thread sleeps
        assert _state(c.pid, c.pid) in ("S", "D")


def test_end_of_stdin_ends_the_child() -> None:
    c = Child()
    try:
        assert c.proc.stdin is not None
        c.proc.stdin.close()
        assert c.proc.wait(timeout=10) == 0
    finally:
        c.close()
    assert not os.path.exists(f"/proc/{c.pid}/task")


def test_wait_asleep_times_out_on_a_burning_thread_and_names_the_child() -> None:
    with Child() as c:
        tid = c.spawn("w")
        c.cmd("tburn w")
        with pytest.raises(TimeoutError, match=f"^child {c.pid} does not go to sleep$"):
            c.wait_asleep(timeout=0.3, tids={tid})
        c.wait_asleep(timeout=20, tids={c.pid})  # the others may burn
        c.cmd("tstop w")
        c.wait_asleep()


def test_wait_asleep_stops_at_once_when_the_child_exited() -> None:
    with Child() as c:
        c.cmd("exit")
        c.proc.wait(timeout=10)
        with pytest.raises(RuntimeError, match=f"^child {c.pid} exited with 0$"):
            c.wait_asleep(timeout=60)
