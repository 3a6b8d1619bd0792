"""Backend selection: one registry, walked in order, each backend judging itself.

The registry (registry.REGISTRY) is the one table of backends: BACKENDS and
the [cmt] backend option follow it, ``choose`` walks it without naming any
backend, and each backend's own ``auto_decision`` says whether ``auto`` may
take it.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from ceilometer_cmt.backends import registry
from ceilometer_cmt.backends.libvirt.backend import LibvirtBackend
from ceilometer_cmt.backends.perf.backend import PerfBackend
from ceilometer_cmt.errors import BackendUnavailable, CmtError
from ceilometer_cmt.readings import Decision, HostCache
from tests.support import paths

SOFTWARE = str(paths.SOFTWARE)


class FakeBackend:
    """A Candidate whose judgement is scripted; records whether it was closed."""

    def __init__(self, name: str, verdict: str | None = None) -> None:
        self.name = name
        self.verdict = verdict  # None = usable, else the reason to refuse
        self.closed = False
        self.judged = 0

    def host_cache(self) -> HostCache:
        return HostCache(())

    def sync(self, instances: Sequence[object]) -> object:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True

    def auto_decision(self) -> Decision:
        self.judged += 1
        if self.verdict is None:
            return Decision(self.name, True, "fake is usable")
        return Decision(self.name, False, self.verdict)


def fake_entry(name: str, verdict: str | None = None, fails: Exception | None = None,
               opened: list[FakeBackend] | None = None) -> registry.Entry:
    def open_(settings, ops, counters):  # type: ignore[no-untyped-def]
        if fails is not None:
            raise fails
        b = FakeBackend(name, verdict)
        if opened is not None:
            opened.append(b)
        return b

    return registry.Entry(name, open_)


def no_backend_settings(host, **kw: str) -> registry.Settings:  # type: ignore[no-untyped-def]
    """Nothing real is usable: resctrl tree not a mount point, no intel_cqm
    PMU in sysfs, libvirt's test driver reports no cache data."""
    args = dict(resctrl_root=host.resctrl, sysfs_root=host.sysfs,
                libvirt_pid_dir=host.pid_dir, libvirt_uri="test:///default")
    args.update(kw)
    return registry.Settings(**args)  # type: ignore[arg-type]


# ------------------------------------------------------------ the one table

def test_backends_follow_the_registry_in_order_of_preference() -> None:
    assert registry.BACKENDS == tuple(e.name for e in registry.REGISTRY)
    assert registry.BACKENDS == ("resctrl", "perf", "libvirt")
    assert [registry.entry(n) for n in registry.BACKENDS] == list(registry.REGISTRY)


def test_the_backend_option_offers_the_registry() -> None:
    from ceilometer_cmt import options

    opt = next(o for o in options.OPTS if o.name == "backend")
    assert tuple(c for c, _help in opt.type.choices.items()) == ("auto", *registry.BACKENDS)


def test_selection_has_no_name_switch() -> None:
    """No comparison with a string, and backend names appear only in REGISTRY."""
    source = inspect.getsource(registry)
    tree = ast.parse(source)
    table_node = next(n for n in tree.body if isinstance(n, ast.AnnAssign)
                    and getattr(n.target, "id", None) == "REGISTRY")
    in_registry = {id(n) for n in ast.walk(table_node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            names = [c.value for c in [node.left, *node.comparators]
                     if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            assert names in ([], ["auto"]), ast.unparse(node)
        if isinstance(node, ast.Constant) and node.value in registry.BACKENDS:
            assert id(node) in in_registry, f"line {node.lineno} names {node.value!r}"


def test_unknown_name_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        registry.entry("pqos")
    with pytest.raises(KeyError):
        registry.choose(registry.Settings(backend="pqos"))


# -------------------------------------------------------- choose walks it

def test_auto_takes_the_first_usable_entry_and_tries_no_further() -> None:
    opened: list[FakeBackend] = []
    entries = [fake_entry("a", fails=BackendUnavailable("a is absent")),
                fake_entry("b", verdict="b refuses", opened=opened),
                fake_entry("c", opened=opened),
                fake_entry("d", opened=opened)]
    backend, decisions = registry.choose(registry.Settings(), registry=entries)
    assert backend is opened[1] and backend.name == "c"
    assert decisions == [Decision("a", False, "a is absent"),
                         Decision("b", False, "b refuses"),
                         Decision("c", True, "selected"),
                         Decision("d", False, "not tried: c chosen first")]
    assert [b.name for b in opened] == ["b", "c"]  # d never opened
    assert opened[0].closed and not opened[1].closed  # the refused one is released


def test_an_extra_entry_is_taken_in_its_place(host, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Appending to the registry is all a new backend needs: choose() and the
    probe report take it after the real ones, with their reasons unchanged."""
    settings = no_backend_settings(host)
    _none, real = registry.choose(settings)
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, fake_entry("extra")))
    backend, decisions = registry.choose(settings)
    assert backend is not None and backend.name == "extra"
    assert decisions == [*real, Decision("extra", True, "selected")]
    # and named explicitly, it is opened (without being judged)
    backend, decisions = registry.choose(registry.Settings(backend="extra"))
    assert isinstance(backend, FakeBackend) and backend.judged == 0
    assert decisions == [Decision("extra", True, "selected")]


def test_an_extra_entry_first_in_the_table_wins(host, monkeypatch
                                                ) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(registry, "REGISTRY", (fake_entry("first"), *registry.REGISTRY))
    backend, decisions = registry.choose(no_backend_settings(host))
    assert backend is not None and backend.name == "first"
    assert decisions == [Decision("first", True, "selected"),
                         *[Decision(n, False, "not tried: first chosen first")
                           for n in ("resctrl", "perf", "libvirt")]]


def test_a_named_backend_is_not_judged() -> None:
    """``backend = <name>``: the operator's choice stands even when ``auto``
    would pass it over."""
    opened: list[FakeBackend] = []
    entries = [fake_entry("a", opened=opened), fake_entry("b", "refuses", opened=opened)]
    backend, decisions = registry.choose(registry.Settings(backend="b"), registry=entries)
    assert backend is opened[0] and opened[0].judged == 0
    assert decisions == [Decision("b", True, "selected")]


@pytest.mark.parametrize("error", [ImportError("no module named x"), OSError(2, "gone")])
def test_open_backend_names_the_backend_in_import_and_os_errors(monkeypatch, error
                                                                ) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(registry, "REGISTRY", (fake_entry("x", fails=error),))
    with pytest.raises(CmtError, match=f"^{re.escape(f'x backend unavailable: {error}')}$"):
        registry.open_backend("x", registry.Settings())
    _none, decisions = registry.choose(registry.Settings())
    assert decisions == [Decision("x", False, f"x backend unavailable: {error}")]


# ------------------------------------------- each backend judges itself

def test_resctrl_is_usable_once_it_opens(host) -> None:  # type: ignore[no-untyped-def]
    backend = host.backend()
    try:
        assert backend.auto_decision() == Decision("resctrl", True,
                                                   f"{host.resctrl} has llc_occupancy")
    finally:
        backend.close()


class Counters:
    """A counter provider whose probe fails with ``error`` (or passes)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.probes = 0

    def probe(self, specs: Sequence[object]) -> None:
        self.probes += 1
        if self.error is not None:
            raise self.error


def test_perf_is_usable_only_when_its_events_open(tmp_path: Path) -> None:
    ok = Counters()
    with PerfBackend(SOFTWARE, "/proc", str(tmp_path), counters=ok) as b:  # type: ignore[arg-type]
        assert b.auto_decision() == Decision("perf", True, "intel_cqm PMU opens")
    assert ok.probes == 1
    refused = Counters(BackendUnavailable("perf_event_paranoid is 3"))
    with PerfBackend(SOFTWARE, "/proc", str(tmp_path),
                     counters=refused) as b:  # type: ignore[arg-type]
        assert b.auto_decision() == Decision(
            "perf", False, "intel_cqm PMU present but does not open: perf_event_paranoid is 3")


def test_auto_passes_over_perf_that_does_not_open(host) -> None:  # type: ignore[no-untyped-def]
    """Through the real registry: perf opens on a PMU tree, its probe fails,
    it is closed and libvirt is tried next."""
    settings = no_backend_settings(host, sysfs_root=SOFTWARE)
    backend, decisions = registry.choose(
        settings, counters=Counters(BackendUnavailable("EACCES")))  # type: ignore[arg-type]
    assert backend is None
    assert [d.backend for d in decisions] == ["resctrl", "perf", "libvirt"]
    assert decisions[1] == Decision("perf", False,
                                    "intel_cqm PMU present but does not open: EACCES")
    backend, decisions = registry.choose(settings, counters=Counters())  # type: ignore[arg-type]
    try:
        assert isinstance(backend, PerfBackend)
        assert decisions[1:] == [Decision("perf", True, "selected"),
                                 Decision("libvirt", False, "not tried: perf chosen first")]
    finally:
        assert backend is not None
        backend.close()


@pytest.mark.parametrize(("domains", "usable", "reason"), [
    (0, False, "no libvirt domain reports cache data (no <monitor> or perf event cmt)"),
    (2, True, "2 domain(s) report cache data"),
])
def test_libvirt_is_usable_only_with_cache_data(monkeypatch, domains, usable, reason
                                                ) -> None:  # type: ignore[no-untyped-def]
    backend = LibvirtBackend("test:///x", connection_factory=lambda uri: None,
                             connect_now=False)
    monkeypatch.setattr(backend, "domains_with_cache_data", lambda: domains)
    assert backend.auto_decision() == Decision("libvirt", usable, reason)


def test_the_real_backends_are_candidates() -> None:
    """Every registered backend class answers auto_decision (the Candidate
    protocol), so the registry needs no per-name check."""
    from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend

    for cls in (ResctrlBackend, PerfBackend, LibvirtBackend):
        assert callable(getattr(cls, "auto_decision", None)), cls
    assert registry.Decision is Decision
