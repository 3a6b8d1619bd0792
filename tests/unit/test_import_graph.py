"""The import graph of ceilometer_cmt, read from the source (AST): no circle, and
no module imports a higher layer.

Layers, lowest first; a module may import its own layer and those below. A
layer is a set of directories (a package and everything in it) and top-level
modules:

- base: values, errors and the meter table every layer uses;
- linux/: procfs, sysfs, pidfds, openat2 (plain Python, root paths as values);
- backends/: the resctrl, perf and libvirt readers and their registry, and the
  monitor on top of them;
- guard/: the guard's CAT policy and cache bit masks (plain Python; it may read
  through the backends and the monitor, never through privsep or the CLI);
- privsep/: the privileged daemon's rules and entrypoints and the agent's guard
  around it, with the options (the lowest layer that may import oslo);
- pollsters/: ceilometer's plugin side;
- testing/: the fake host and kernel trees the demo and the tests share;
- cmd/: the CLI, poll, demo, top.

The simulator is its own world: it imports no plugin module (see
tests/unit/simulator/test_independence.py), and only testing/ and cmd/ import
it. Imports at any depth count, inside functions too: a lazy import still ties
two modules together.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.import_scan import find_cycle, imported_modules
from tests.support.paths import PACKAGE

#: layer -> the packages (with everything below them) and modules it holds
LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("ceilometer_cmt", "errors", "readings", "counters", "meters"),
    "linux": ("linux",),
    "backends": ("backends", "monitor"),
    "guard": ("guard",),
    "privsep": ("privsep", "options"),
    "pollsters": ("pollsters",),
    "testing": ("testing",),
    "cmd": ("cmd",),
}
ORDER = list(LAYERS)
#: third-party packages only the privsep layer and above may import
OPENSTACK = ("ceilometer", "oslo_config", "oslo_privsep", "oslo_log", "oslo_messaging",
             "oslo_utils", "stevedore")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(plugin modules, top-level third-party packages) ``name`` imports, at any depth."""
    found = imported_modules(path.read_text(), name, path.name == "__init__.py")
    ours = {m for m in found if m in known and m != name}
    # ``from pkg import mod`` names both: Python runs pkg/__init__ before mod
    # whoever imports it, so the edge is to mod (pkg's own imports are its edges)
    ours -= {p for p in ours if any(m.startswith(p + ".") for m in ours)}
    others = {m.partition(".")[0] for m in found
              if m != "ceilometer_cmt" and not m.startswith("ceilometer_cmt.")}
    return ours, others


def short(module: str) -> str:
    return module.removeprefix("ceilometer_cmt.") if module != "ceilometer_cmt" else module


def layer_of(module: str) -> str:
    s = short(module)
    if s == "simulator" or s.startswith("simulator."):
        return "simulator"
    for layer, names in LAYERS.items():
        if any(s == n or s.startswith(n + ".") for n in names):
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known)[0] for m, p in known.items()}


def test_every_module_has_a_layer() -> None:
    for m in modules():
        layer_of(m)


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for m, deps in graph().items():
        mine = layer_of(m)
        for d in deps:
            theirs = layer_of(d)
            if theirs == "simulator" and mine not in ("simulator", "testing", "cmd"):
                wrong.append(f"{short(m)} ({mine}) imports the simulator ({short(d)})")
            elif mine != "simulator" and theirs != "simulator" and \
                    ORDER.index(theirs) > ORDER.index(mine):
                wrong.append(f"{short(m)} ({mine}) imports {short(d)} ({theirs})")
    assert not wrong, "\n".join(sorted(wrong))


def test_only_the_openstack_side_imports_openstack() -> None:
    known = modules()
    wrong = []
    for m, path in known.items():
        layer = layer_of(m)
        if layer in ("base", "linux", "backends", "guard", "simulator"):
            bad = imports(m, path, known)[1] & set(OPENSTACK)
            if bad:
                wrong.append(f"{short(m)} ({layer}) imports {sorted(bad)}")
    assert not wrong, "\n".join(wrong)


def test_no_circle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_checks_can_fail() -> None:
    """The reader sees imports inside functions and relative ones; circles are found."""
    known = modules()
    registry = "ceilometer_cmt.backends.registry"
    ours, _ = imports(registry, known[registry], known)
    assert "ceilometer_cmt.backends.resctrl.backend" in ours  # imported inside a function
    _, others = imports("ceilometer_cmt.options", known["ceilometer_cmt.options"], known)
    assert "oslo_config" in others
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
