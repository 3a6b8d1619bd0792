"""Which backend runs: one table of backends, tried in order of preference.

:data:`REGISTRY` lists the backends, resctrl, perf, libvirt; each entry opens
its backend from :class:`Settings`. ``auto`` takes the first that opens and
whose own ``auto_decision()`` says usable: resctrl when mounted with
``llc_occupancy``; else perf when the ``intel_cqm`` PMU exists and opens; else
libvirt when at least one domain reports cache data. Every rejected backend
keeps the reason, for ``ceilometer-cmt probe`` and the agent's start-up log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ceilometer_cmt.backends.resctrl import fs as resctrl
from ceilometer_cmt.errors import CmtError
from ceilometer_cmt.readings import Backend, Decision

if TYPE_CHECKING:
    from ceilometer_cmt.backends.perf.counter_providers import CounterProvider

__all__ = ["BACKENDS", "REGISTRY", "Candidate", "Decision", "Entry", "Settings", "choose",
           "entry", "open_backend"]


@dataclass(frozen=True)
class Settings:
    """The [cmt] options as plain values (see options.py for their meaning)."""

    backend: str = "auto"
    resctrl_root: str = "/sys/fs/resctrl"
    sysfs_root: str = "/sys"
    proc_root: str = "/proc"
    libvirt_pid_dir: str = "/run/libvirt/qemu"
    resctrl_group_prefix: str = "ceilometer-"
    resctrl_verify_mount: bool = True
    libvirt_uri: str = "qemu:///system"
    #: the backend events the polled meters need (``meters.Meter.events``);
    #: None: all the host offers. The resctrl and perf backends read no other.
    events: frozenset[str] | None = None


class Candidate(Backend, Protocol):
    """A backend the registry can offer: it also judges whether ``auto`` may take it."""

    def auto_decision(self) -> Decision:
        """Usable, or the stated reason why ``auto`` must pass it over. Called
        on the opened backend: judging needs what opening built (perf's events
        and counter provider, libvirt's connection)."""
        ...


#: Opens one backend from the settings, with the privileged ops (resctrl) and
#: counters (perf); raises CmtError (or ImportError/OSError) saying why not.
Opener = Callable[[Settings, "resctrl.ResctrlOps | None", "CounterProvider | None"], Candidate]


@dataclass(frozen=True)
class Entry:
    """One backend of the registry: its name and how it opens."""

    name: str
    open: Opener


def _resctrl(s: Settings, ops: resctrl.ResctrlOps | None,
             counters: CounterProvider | None = None) -> Candidate:
    from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend

    return ResctrlBackend(s.resctrl_root, sysfs_root=s.sysfs_root, proc_root=s.proc_root,
                          pid_dir=s.libvirt_pid_dir, prefix=s.resctrl_group_prefix,
                          verify_mount=s.resctrl_verify_mount, ops=ops, events=s.events)


def _perf(s: Settings, ops: resctrl.ResctrlOps | None,
          counters: CounterProvider | None = None) -> Candidate:
    from ceilometer_cmt.backends.perf.backend import PerfBackend, perf_events

    return PerfBackend(sysfs_root=s.sysfs_root, proc_root=s.proc_root,
                       libvirt_pid_dir=s.libvirt_pid_dir, counters=counters,
                       events=perf_events(s.events))


def _libvirt(s: Settings, ops: resctrl.ResctrlOps | None,
             counters: CounterProvider | None = None) -> Candidate:
    from ceilometer_cmt.backends.libvirt.backend import LibvirtBackend

    return LibvirtBackend(s.libvirt_uri, sysfs_root=s.sysfs_root)


#: THE table of backends, in ``auto``'s order of preference. A new backend is
#: one more entry here (and an ``auto_decision`` on its class); nothing else in
#: this module names a backend.
REGISTRY: tuple[Entry, ...] = (
    Entry("resctrl", _resctrl),
    Entry("perf", _perf),
    Entry("libvirt", _libvirt),
)
BACKENDS = tuple(e.name for e in REGISTRY)


def entry(name: str, registry: Sequence[Entry] | None = None) -> Entry:
    """The registry's entry called ``name``; KeyError when there is none."""
    for e in REGISTRY if registry is None else registry:
        if e.name == name:
            return e
    raise KeyError(name)


def _open(e: Entry, settings: Settings, ops: resctrl.ResctrlOps | None,
          counters: CounterProvider | None) -> Candidate:
    try:
        return e.open(settings, ops, counters)
    except CmtError:
        raise
    except ImportError as err:
        raise CmtError(f"{e.name} backend unavailable: {err}") from err
    except OSError as err:
        raise CmtError(f"{e.name} backend unavailable: {err}") from err


def open_backend(name: str, settings: Settings,
                 ops: resctrl.ResctrlOps | None = None,
                 counters: CounterProvider | None = None) -> Backend:
    """Open one named backend or raise CmtError saying why it cannot work.

    ``ops`` (resctrl) and ``counters`` (perf) say where privileged work
    happens; None = in this process."""
    return _open(entry(name), settings, ops, counters)


def choose(settings: Settings, ops: resctrl.ResctrlOps | None = None,
           counters: CounterProvider | None = None,
           registry: Sequence[Entry] | None = None
           ) -> tuple[Backend | None, list[Decision]]:
    """The backend to run and one Decision per backend considered, in order.

    ``auto`` walks the registry: each backend is opened and asked its
    ``auto_decision``; the first usable one is chosen, the rest are not
    tried. A named backend is only opened (its own judgement is not asked:
    the operator chose it)."""
    table = REGISTRY if registry is None else tuple(registry)
    auto = settings.backend == "auto"
    entries = table if auto else (entry(settings.backend, table),)
    decisions: list[Decision] = []
    chosen: Backend | None = None
    for e in entries:
        if chosen is not None:
            decisions.append(Decision(e.name, False, f"not tried: {chosen.name} chosen first"))
            continue
        try:
            backend = _open(e, settings, ops, counters)
        except CmtError as err:
            decisions.append(Decision(e.name, False, str(err)))
            continue
        if auto:
            verdict = backend.auto_decision()
            if not verdict.usable:
                backend.close()
                decisions.append(Decision(e.name, False, verdict.reason))
                continue
        chosen = backend
        decisions.append(Decision(e.name, True, "selected"))
    return chosen, decisions
