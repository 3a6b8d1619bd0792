"""The simulator is an independent oracle: it shares no code with the plugin
it checks, its modules form no import cycle, and it reads procfs with parsers
of its own.

The import checks read each file's AST, so they see every import at any
depth (inside functions too), including ``importlib.import_module("...")``
and ``__import__("...")`` with a constant name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ceilometer_cmt.backends.resctrl import fs as resctrl
from ceilometer_cmt.simulator import layout, procfs
from tests.support import paths
from tests.support.import_scan import find_cycle, imported_modules

PACKAGE = "ceilometer_cmt.simulator"
SIM_DIR = paths.PACKAGE / "simulator"

#: Plugin modules the simulator may import.  None: the simulator is the oracle
#: for the plugin's resctrl code, so a shared parser would share its bugs.  It
#: has its own /proc/PID/stat and mountinfo readers (simulator/procfs.py), its
#: own mount name (simulator/layout.py: SUBTYPE, FSTYPE) and its own prctl
#: PDEATHSIG helper (simulator/runner.py).
ALLOWED_PLUGIN_IMPORTS: frozenset[str] = frozenset()

#: The modules that make the state machine: they must not import the layers
#: that serve it (the model raises SimError; tree/fs turn it into files and
#: errnos).
STATE_MACHINE = ("errors", "kstr", "groups", "bmec", "assign", "layout", "rmids", "writes",
                 "tasks", "telemetry", "counters", "model")
SERVING = ("tree", "fs", "control", "runner")

#: Every module, bottom up, as simulator/__init__.py lists them: each may
#: import only modules before it (so there can be no cycle).
ORDER = (
    "topology", "timeline", "scenario", "procfs", "workload",  # inputs
    "errors", "kstr", "groups", "bmec", "assign", "layout", "rmids", "writes", "tasks",
    "telemetry", "counters", "model",
    "tree", "fs", "control", "runner", "__init__", "__main__",  # serving it
)

def _module_name(path: Path) -> str:
    rel = path.relative_to(SIM_DIR).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def _sim_files() -> list[Path]:
    return sorted(SIM_DIR.rglob("*.py"))


def _imports_of(path: Path) -> set[str]:
    return imported_modules(
        path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py"
    )


def _is_plugin_module(name: str) -> bool:
    inside = name == PACKAGE or name.startswith(PACKAGE + ".")
    return (name == "ceilometer_cmt" or name.startswith("ceilometer_cmt.")) and not inside


def _simulator_modules() -> set[str]:
    return {_module_name(p) for p in _sim_files()}


def _graph() -> dict[str, set[str]]:
    """Simulator module -> the simulator modules it imports.

    Edges to the package itself are left out: Python runs a package's
    ``__init__`` before any of its submodules, whoever imports them, so
    ``from ceilometer_cmt.simulator import host`` is an edge to ``host``
    alone.  The ``__init__``'s own imports are edges like any other.
    """
    modules = _simulator_modules() - {PACKAGE}
    return {
        _module_name(p): {m for m in _imports_of(p) if m in modules} - {_module_name(p)}
        for p in _sim_files()
    }


# ------------------------------------------------------------- the checks
def test_the_simulator_imports_no_plugin_module() -> None:
    files = _sim_files()
    assert len(files) > 10, SIM_DIR
    wrong = {
        f"{p.name}: {m}"
        for p in files
        for m in _imports_of(p)
        if _is_plugin_module(m) and m not in ALLOWED_PLUGIN_IMPORTS
    }
    assert not wrong, "the simulator must not import the plugin it checks:\n" + "\n".join(
        sorted(wrong)
    )


def test_the_simulator_modules_form_no_import_cycle() -> None:
    graph = _graph()
    assert f"{PACKAGE}.model" in graph and f"{PACKAGE}.tree" in graph[f"{PACKAGE}.fs"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_state_machine_does_not_import_the_layers_serving_it() -> None:
    graph = _graph()
    wrong = {
        f"{m} imports {s}"
        for m in STATE_MACHINE
        for s in SERVING
        if f"{PACKAGE}.{s}" in graph[f"{PACKAGE}.{m}"]
    }
    assert not wrong, sorted(wrong)


def test_each_module_imports_only_the_ones_below_it() -> None:
    graph = _graph()
    names = {m: m.removeprefix(PACKAGE).lstrip(".") or "__init__" for m in graph}
    assert sorted(names.values()) == sorted(ORDER), "ORDER must list every module"
    rank = {name: i for i, name in enumerate(ORDER)}
    wrong = {
        f"{names[m]} imports {names[d]}"
        for m, deps in graph.items()
        for d in deps
        if rank[names[d]] >= rank[names[m]]
    }
    assert not wrong, sorted(wrong)


def test_the_scanner_sees_imports_at_any_depth() -> None:
    source = """
import os
from ceilometer_cmt.simulator import host
from . import tree
from ..procfs import stat_start_time
def f():
    from ceilometer_cmt.backends.resctrl import fs as resctrl
    class C:
        def g(self):
            import ceilometer_cmt.testing.childproc as cp
            importlib.import_module("ceilometer_cmt.errors")
"""
    found = imported_modules(source, f"{PACKAGE}.model")
    assert {
        "os", f"{PACKAGE}.host", f"{PACKAGE}.tree", "ceilometer_cmt.procfs",
        "ceilometer_cmt.backends.resctrl.fs", "ceilometer_cmt.testing.childproc",
        "ceilometer_cmt.errors",
    } <= found
    plugin = {m for m in found if _is_plugin_module(m)}
    assert plugin == {
        "ceilometer_cmt.procfs", "ceilometer_cmt.procfs.stat_start_time",
        "ceilometer_cmt.backends.resctrl", "ceilometer_cmt.backends.resctrl.fs",
        "ceilometer_cmt.testing.childproc", "ceilometer_cmt.errors",
    }


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import() -> None:
    model = imported_modules("def f():\n    from .tree import resolve\n", f"{PACKAGE}.model")
    tree = imported_modules("from .model import Model\n", f"{PACKAGE}.tree")
    modules = {f"{PACKAGE}.model", f"{PACKAGE}.tree"}
    graph = {f"{PACKAGE}.model": model & modules, f"{PACKAGE}.tree": tree & modules}
    assert find_cycle(graph) in (
        [f"{PACKAGE}.model", f"{PACKAGE}.tree", f"{PACKAGE}.model"],
        [f"{PACKAGE}.tree", f"{PACKAGE}.model", f"{PACKAGE}.tree"],
    )


# ------------------------------------------- one mount name, two owners
def test_plugin_and_simulator_agree_on_the_mount_name() -> None:
    """Each side states the fstype itself (the plugin must not import its
    test oracle); this is where they meet."""
    assert layout.FSTYPE == f"fuse.{layout.SUBTYPE}"
    assert (resctrl.SIMULATOR_SUBTYPE, resctrl.SIMULATOR_FSTYPE) == (layout.SUBTYPE, layout.FSTYPE)
    assert layout.FSTYPE in resctrl.RESCTRL_FSTYPES


# ------------------------------------------------ the simulator's parsers
def test_stat_fields_start_after_the_last_parenthesis(tmp_path: Path) -> None:
    # comm may hold spaces and ")": "(a) 1 2 (b)" must not shift the fields
    fields = ["S", "77"] + [str(n) for n in range(5, 22)] + ["424242", "0", "0"]
    for comm in ("sleep", "a) 1 2 (b", ") )", "x y"):
        (tmp_path / "99").mkdir(exist_ok=True)
        (tmp_path / "99" / "stat").write_text(f"99 ({comm}) {' '.join(fields)}\n")
        (tmp_path / "99" / "status").write_text("Tgid:\t98\nUid:\t1\t2\t3\t4\n")
        assert procfs.task_start(str(tmp_path), 99) == 424242
        info = procfs.task_info(str(tmp_path), 99)
        assert info is not None
        assert (info.ppid, info.start, info.tgid, info.uid, info.suid) == (77, 424242, 98, 1, 3)
    (tmp_path / "99" / "stat").write_text("99 (short) S 1 2\n")
    assert procfs.task_start(str(tmp_path), 99) is None
    assert procfs.task_start(str(tmp_path), 12345) is None


def test_task_start_of_real_tasks() -> None:
    mine = procfs.task_start("/proc", os.getpid())
    assert mine is not None and 0 < mine <= procfs.now_ticks()
    assert procfs.task_start("/proc", 1) is not None
    assert procfs.task_start("/proc", 1) <= mine  # type: ignore[operator]


MOUNTINFO = (
    b"22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n"
    b"30 22 0:30 / /run/cmt\\040sim rw shared:7 master:1 - fuse.cmt-resctrl-sim resctrl rw\n"
    b"31 22 0:31 / /run/back\\134slash rw - tmpfs tmpfs rw\n"
    b"32 22 0:32 / /run/tab\\011and\\012nl rw - fuse.odd\\040type src rw\n"
    b"40 22 0:40 / /sys/fs/resctrl rw - tmpfs none rw\n"
    b"41 40 0:41 / /sys/fs/resctrl rw - resctrl resctrl rw\n"
    b"50 22 0:50 / /x\r1 rw - resctrl resctrl rw\n"
    b"51 22 0:51 / /opt/- rw - ext4 /dev/sda1 rw\n"
    b"garbage line\n"
)


@pytest.mark.parametrize(
    ("mount_point", "fstype"),
    [
        ("/proc", "proc"),
        ("/run/cmt sim", "fuse.cmt-resctrl-sim"),  # \040, two optional fields
        ("/run/back\\slash", "tmpfs"),  # \134
        ("/run/tab\tand\nnl", "fuse.odd type"),  # fstype is mangled too
        ("/sys/fs/resctrl", "resctrl"),  # the last mount wins
        ("/x\r1", "resctrl"),  # only \n ends a line
        ("/opt/-", "ext4"),  # a "-" mount point is not the separator
        ("/run/cmt\\040sim", None),  # compared unescaped
        ("/run", None),
    ],
)
def test_fstype_at_reads_mountinfo_as_the_kernel_writes_it(
    mount_point: str, fstype: str | None
) -> None:
    assert procfs.fstype_at(MOUNTINFO, mount_point) == fstype


def test_mount_fstype_of_the_real_mountinfo(tmp_path: Path) -> None:
    assert procfs.mount_fstype("/proc") == "proc"
    assert procfs.mount_fstype(str(tmp_path)) is None
    assert procfs.mount_fstype("/proc", str(tmp_path / "no-such-file")) is None
