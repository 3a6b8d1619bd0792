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


def layout_names(readme: str) -> set[str]:
    """The names in backticks in the README's "Layout" section."""
    import re

    section = readme[readme.index("\n## Layout\n"):]
    nxt = section.find("\n## ", 1)
    return set(re.findall(r"`([^`\s]+)`", section if nxt < 0 else section[:nxt]))


def test_the_readme_layout_names_every_module() -> None:
    """A newcomer reads the layout in the README: every module has its line,
    named from its layer's directory (``resctrl/fs.py`` under ``backends/``,
    ``top/view.py`` under ``cmd/``, ``errors.py`` at the top)."""
    names = layout_names((PACKAGE.parent / "README.md").read_text(encoding="utf-8"))
    missing = []
    for module in sorted(PACKAGE.rglob("*.py")):
        rel = module.relative_to(PACKAGE)
        if module.name in ("__init__.py", "__main__.py") or "__pycache__" in rel.parts:
            continue
        name = "/".join(rel.parts[1:]) if len(rel.parts) > 1 else rel.name
        if name not in names:
            missing.append(rel.as_posix())
    assert not missing, f"README.md 'Layout' does not name: {missing}"


#: "no module over about 400 lines": a module past this is split
MAX_LINES = 420


def test_no_module_is_a_big_room() -> None:
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def class_homes(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Class name -> the modules defining a class of that name (nested
    classes included), for the names defined more than once."""
    import ast
    from collections import defaultdict

    homes: dict[str, list[str]] = defaultdict(list)
    for module in sorted(package.rglob("*.py")):
        if "__pycache__" in module.parts:
            continue
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                homes[node.name].append(module.relative_to(package).as_posix())
    return {name: where for name, where in homes.items() if len(where) > 1}


def test_no_two_classes_share_a_name() -> None:
    """A name is one thing: two classes called ``Plan`` (or ``_File``) make a
    reader ask which one an annotation means."""
    assert class_homes() == {}


def test_the_class_name_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.py").write_text("class Plan:\n    class _Row: ...\n")
    (tmp_path / "two.py").write_text("def f():\n    class _Row: ...\nclass Other: ...\n")
    assert class_homes(tmp_path) == {"_Row": ["a/one.py", "two.py"]}
