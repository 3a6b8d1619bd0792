"""tests/unit/ mirrors ceilometer_cmt/: ``tests/unit/<dir>/test_<module>.py``
tests ``ceilometer_cmt/<dir>/<module>.py``, so a reader finds a module's tests
without searching. Property tests sit beside as ``test_<module>_properties.py``;
the tests of the package's structure are named in STRUCTURE."""

from __future__ import annotations

from pathlib import Path

from tests.support.paths import PACKAGE, TESTS

UNIT = TESTS / "unit"
#: tests of the tree itself, not of one module
STRUCTURE = {"test_import_graph.py", "test_tree_mirror.py", "simulator/test_independence.py"}


def module_of(test: Path, unit: Path = UNIT, package: Path = PACKAGE) -> Path | None:
    """The module ``test`` is the mirror of (None for a structure test)."""
    rel = test.relative_to(unit)
    if rel.as_posix() in STRUCTURE:
        return None
    name = rel.stem.removeprefix("test_").removesuffix("_properties")
    return package / rel.parent / f"{name}.py"


def orphans(unit: Path = UNIT, package: Path = PACKAGE) -> list[str]:
    out = []
    for test in sorted(unit.rglob("test_*.py")):
        module = module_of(test, unit, package)
        if module is not None and not module.is_file():
            out.append(f"{test.relative_to(unit)} mirrors no module "
                       f"({module.relative_to(package.parent)} does not exist)")
    return out


def test_every_unit_test_file_mirrors_a_module() -> None:
    assert orphans() == []


def test_every_directory_of_tests_is_a_package_directory() -> None:
    missing = [str(d.relative_to(UNIT)) for d in sorted(UNIT.rglob("*"))
               if d.is_dir() and d.name != "__pycache__"
               and not (PACKAGE / d.relative_to(UNIT)).is_dir()]
    assert missing == []


def test_the_check_finds_an_orphan(tmp_path: Path) -> None:
    unit, package = tmp_path / "unit", tmp_path / "pkg"
    (unit / "linux").mkdir(parents=True)
    (package / "linux").mkdir(parents=True)
    (package / "linux" / "procfs.py").write_text("")
    for name in ("test_procfs.py", "test_procfs_properties.py", "test_gone.py"):
        (unit / "linux" / name).write_text("")
    assert orphans(unit, package) == [
        "linux/test_gone.py mirrors no module (pkg/linux/gone.py does not exist)"]
