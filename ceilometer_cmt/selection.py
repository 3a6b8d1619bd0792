"""Which backend runs: one table of backends, tried in order of preference.

``auto`` takes the first that works: resctrl when mounted with
``llc_occupancy``; else perf when the ``intel_cqm`` PMU exists and opens; else
libvirt when at least one domain reports cache data. Every rejected backend
keeps the reason, for ``ceilometer-cmt probe`` and the agent's start-up log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ceilometer_cmt import resctrl
from ceilometer_cmt.errors import CmtError
from ceilometer_cmt.readings import Backend

if TYPE_CHECKING:
    from ceilometer_cmt.perf_backend import CounterProvider

BACKENDS = ("resctrl", "perf", "libvirt")


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


@dataclass(frozen=True)
class Decision:
    backend: str
    usable: bool
    reason: str


def _resctrl(s: Settings, ops: resctrl.ResctrlOps | None,
             counters: CounterProvider | None = None) -> Backend:
    from ceilometer_cmt.resctrl_backend import ResctrlBackend

    return ResctrlBackend(s.resctrl_root, sysfs_root=s.sysfs_root, proc_root=s.proc_root,
                          pid_dir=s.libvirt_pid_dir, prefix=s.resctrl_group_prefix,
                          verify_mount=s.resctrl_verify_mount, ops=ops)


def _perf(s: Settings, ops: resctrl.ResctrlOps | None,
          counters: CounterProvider | None = None) -> Backend:
    from ceilometer_cmt.perf_backend import PerfBackend

    backend: Backend = PerfBackend(sysfs_root=s.sysfs_root, proc_root=s.proc_root,
                                   libvirt_pid_dir=s.libvirt_pid_dir, counters=counters)
    return backend


def _libvirt(s: Settings, ops: resctrl.ResctrlOps | None,
             counters: CounterProvider | None = None) -> Backend:
    from ceilometer_cmt.libvirt_backend import LibvirtBackend

    backend: Backend = LibvirtBackend(s.libvirt_uri, sysfs_root=s.sysfs_root)
    return backend


_FACTORIES: dict[str, Callable[[Settings, resctrl.ResctrlOps | None,
                                CounterProvider | None], Backend]] = {
    "resctrl": _resctrl, "perf": _perf, "libvirt": _libvirt,
}


def _auto_check(name: str, backend: Backend) -> str | None:
    """Extra condition ``auto`` puts on a backend that opened; None = accept."""
    if name == "perf":
        try:
            backend.probe()  # type: ignore[attr-defined]
        except CmtError as e:
            return f"intel_cqm PMU present but does not open: {e}"
    if name == "libvirt":
        probe = getattr(backend, "domains_with_cache_data", None)
        if probe is not None and not probe():
            return "no libvirt domain reports cache data (no <monitor> or perf event cmt)"
    return None


def open_backend(name: str, settings: Settings,
                 ops: resctrl.ResctrlOps | None = None,
                 counters: CounterProvider | None = None) -> Backend:
    """Open one named backend or raise CmtError saying why it cannot work.

    ``ops`` (resctrl) and ``counters`` (perf) say where privileged work
    happens; None = in this process."""
    try:
        return _FACTORIES[name](settings, ops, counters)
    except CmtError:
        raise
    except ImportError as e:
        raise CmtError(f"{name} backend unavailable: {e}") from e
    except OSError as e:
        raise CmtError(f"{name} backend unavailable: {e}") from e


def choose(settings: Settings, ops: resctrl.ResctrlOps | None = None,
           counters: CounterProvider | None = None
           ) -> tuple[Backend | None, list[Decision]]:
    names = BACKENDS if settings.backend == "auto" else (settings.backend,)
    decisions: list[Decision] = []
    chosen: Backend | None = None
    for name in names:
        if chosen is not None:
            decisions.append(Decision(name, False, f"not tried: {chosen.name} chosen first"))
            continue
        try:
            backend = open_backend(name, settings, ops, counters)
        except CmtError as e:
            decisions.append(Decision(name, False, str(e)))
            continue
        refusal = _auto_check(name, backend) if settings.backend == "auto" else None
        if refusal:
            backend.close()
            decisions.append(Decision(name, False, refusal))
            continue
        chosen = backend
        decisions.append(Decision(name, True, "selected"))
    return chosen, decisions
