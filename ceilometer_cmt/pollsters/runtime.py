"""One monitor per agent process, shared by every pollster of this plugin.

Ceilometer builds one object per entry point and runs the pollsters of a
polling task in a thread pool, all with one ``cache`` dict. The first pollster
to run in a cycle reads the backend once and stores the result there; the
others use it.

The backend reads only the events of the meters the agent polls
(:func:`needed_events`): every read of a resctrl L3 value makes the kernel run
the read on a CPU of that domain (``mon_event_read()`` in
``fs/resctrl/ctrlmondata.c``: ``smp_call_on_cpu()``, or an IPI through
``smp_call_function_any()`` when that CPU is ``nohz_full``), a disturbance of
the very VMs measured. With only ``cache.occupancy`` polled that is one read
per instance and L3 domain instead of three.
"""

from __future__ import annotations

import logging
import os
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ceilometer_cmt import meters, options
from ceilometer_cmt.backends import registry
from ceilometer_cmt.backends.perf.counter_providers import CounterProvider, DirectCounters
from ceilometer_cmt.backends.resctrl.fs import DirectOps, ResctrlOps
from ceilometer_cmt.monitor import CacheMonitor, CycleResult
from ceilometer_cmt.pollsters import instance_settings
from ceilometer_cmt.readings import InstanceRef

LOG = logging.getLogger(__name__)
CACHE_KEY = "ceilometer_cmt.cycle"
#: vm_state values that have a qemu process: ceilometer's LIBVIRT_POWER_STATE
#: names (``libvirt_metadata`` discovery) and Nova's vm_states (``naive``
#: discovery reads the servers from the Nova API: a running one is "active").
RUNNING_STATES = frozenset({"running", "paused", "suspended",
                            "active", "rescued", "resized"})
_LOCK = threading.Lock()
_RUNTIMES: dict[int, Runtime] = {}


@dataclass
class Runtime:
    settings: registry.Settings
    monitor: CacheMonitor | None
    decisions: list[registry.Decision] = field(default_factory=list)

    @property
    def why_off(self) -> str:
        return "; ".join(f"{d.backend}: {d.reason}" for d in self.decisions if not d.usable)


def libvirt_uri(conf: Any) -> str:
    uri = conf.cmt.libvirt_uri or getattr(conf, "libvirt_uri", "") or ""
    if uri:
        return str(uri)
    per_type = {"parallels": "parallels:///system", "lxc": "lxc:///"}
    return per_type.get(getattr(conf, "libvirt_type", "kvm") or "kvm", "qemu:///system")


def settings_from_conf(conf: Any) -> registry.Settings:
    options.register_opts(conf)
    c = conf.cmt
    return registry.Settings(
        backend=c.backend, resctrl_root=c.resctrl_root, sysfs_root=c.sysfs_root,
        proc_root=c.proc_root, libvirt_pid_dir=c.libvirt_pid_dir,
        resctrl_group_prefix=c.resctrl_group_prefix,
        resctrl_verify_mount=c.resctrl_verify_mount, libvirt_uri=libvirt_uri(conf))


def polled_meters(conf: Any) -> tuple[meters.Meter, ...] | None:
    """This plugin's meters that the agent polls: those some source of its
    polling file (``[polling] cfg_file``) supports, as ceilometer's own
    ``AgentManager.setup_polling_tasks()`` decides it (a pollster runs in each
    source whose ``support_meter(name)`` is true: names, ``*`` wildcards and
    ``!`` exclusions). None when the file cannot be read here: then every
    meter (the agent reads the same file and says what is wrong with it)."""
    from ceilometer.polling import manager as polling_manager

    try:
        sources = polling_manager.PollingManager(conf).sources
    except Exception as e:  # noqa: BLE001 - any failure: read everything, never less
        LOG.warning("ceilometer-cmt: cannot tell the polled meters from [polling] "
                    "cfg_file (%s); reading every event the host offers", e)
        return None
    return tuple(m for m in meters.TABLE if any(s.support_meter(m.name) for s in sources))


def needed_events(conf: Any) -> frozenset[str] | None:
    """The backend events the polled meters need (None: all the host offers)."""
    polled = polled_meters(conf)
    return None if polled is None else meters.events_of(polled)


def _direct(conf: Any) -> bool:
    mode = conf.cmt.privsep
    return bool(mode == "never" or (mode == "auto" and os.geteuid() == 0))


def resctrl_ops(conf: Any, settings: registry.Settings) -> ResctrlOps:
    mode = conf.cmt.privsep
    if _direct(conf):
        return DirectOps()
    try:
        from ceilometer_cmt.privsep import daemon_guard as privsep_guard
        from ceilometer_cmt.privsep.entrypoints import PrivsepOps
    except ImportError as e:  # pragma: no cover - oslo.privsep is a dependency
        raise RuntimeError(f"[cmt] privsep={mode} needs oslo.privsep: {e}") from e
    privsep_guard.configure(conf)  # the agent's [cmt_privsep] reaches oslo.privsep
    return privsep_guard.GuardedOps(PrivsepOps(settings.resctrl_root,
                                               settings.resctrl_group_prefix))


def perf_counters(conf: Any, ops: ResctrlOps) -> CounterProvider:
    """Where the perf backend opens its counters: in this process, or in the
    privsep daemon (chosen like :func:`resctrl_ops`, sharing its guard)."""
    if _direct(conf):
        return DirectCounters()
    from ceilometer_cmt.privsep import daemon_guard as privsep_guard
    from ceilometer_cmt.privsep.entrypoints import PrivsepCounters

    privsep_guard.configure(conf)
    guard = ops if isinstance(ops, privsep_guard.DaemonGuard) else None
    return privsep_guard.GuardedCounters(PrivsepCounters(), guard)


class _CeilometerLibvirt:
    """The agent's libvirt connection, kept and renewed by ceilometer's own
    ``refresh_libvirt_connection`` (which stores it on this object, as it does
    on its libvirt inspector): a new read-only connection when the held one is
    no longer alive. The URI is the plugin's (``[cmt] libvirt_uri`` first)."""

    _libvirt_connection: Any = None

    def __init__(self, uri: str) -> None:
        from ceilometer.compute.virt.libvirt import utils as libvirt_utils

        self._utils = libvirt_utils
        # new_libvirt_connection reads only these two options.
        self._conf = types.SimpleNamespace(libvirt_uri=uri, libvirt_type="kvm")

    def __call__(self) -> Any:
        return self._utils.refresh_libvirt_connection(self._conf, self)


def libvirt_connector(uri: str) -> tuple[Callable[[], Any], Callable[[BaseException], bool]]:
    """The libvirt backend's ``connect`` and ``is_disconnected``, from
    ceilometer's ``ceilometer.compute.virt.libvirt.utils`` (the backend itself
    imports no ceilometer)."""
    from ceilometer.compute.virt.libvirt import utils as libvirt_utils

    if libvirt_utils.libvirt is None:
        raise ImportError("libvirt backend needs libvirt-python (pip install libvirt-python)")
    return _CeilometerLibvirt(uri), libvirt_utils.is_disconnection_exception


def _open_libvirt(s: registry.Settings, ops: ResctrlOps | None,
                  counters: CounterProvider | None = None) -> registry.Candidate:
    from ceilometer_cmt.backends.libvirt.backend import LibvirtBackend

    connect, is_disconnected = libvirt_connector(s.libvirt_uri)
    return LibvirtBackend(s.libvirt_uri, sysfs_root=s.sysfs_root, connect=connect,
                          is_disconnected=is_disconnected)


def agent_registry() -> tuple[registry.Entry, ...]:
    """The registry, with the libvirt entry connecting through ceilometer."""
    return tuple(registry.Entry(e.name, _open_libvirt) if e.name == "libvirt" else e
                 for e in registry.REGISTRY)


def get_runtime(conf: Any) -> Runtime:
    with _LOCK:
        rt = _RUNTIMES.get(id(conf))
        if rt is not None:
            return rt
        settings = replace(settings_from_conf(conf), events=needed_events(conf))
        ops = resctrl_ops(conf, settings)
        backend, decisions = registry.choose(settings, ops, perf_counters(conf, ops),
                                              registry=agent_registry())
        interval = conf.cmt.log_interval  # None for "log_interval =" in a file
        monitor = (CacheMonitor(backend, log_interval=options.LOG_INTERVAL
                                if interval is None else interval)
                   if backend else None)
        rt = Runtime(settings, monitor, decisions)
        if monitor is None:
            LOG.warning("ceilometer-cmt: per-instance cache meters are OFF: no usable backend "
                        "(%s). Run 'ceilometer-cmt probe' for details.", rt.why_off)
        else:
            LOG.info("ceilometer-cmt: backend %s (%s); events read: %s", monitor.backend.name,
                     "; ".join(f"{d.backend}: {d.reason}" for d in decisions),
                     "all" if settings.events is None else ", ".join(sorted(settings.events))
                     or "none (host meters only)")
        _RUNTIMES[id(conf)] = rt
        return rt


def reset() -> None:
    """Forget every runtime (tests, and the CLI between runs)."""
    with _LOCK:
        for rt in _RUNTIMES.values():
            if rt.monitor:
                rt.monitor.close()
        _RUNTIMES.clear()


def instance_ref(resource: Any) -> InstanceRef | None:
    """A discovered instance -> InstanceRef, or None when it has no qemu."""
    state = getattr(resource, "OS-EXT-STS:vm_state", "running")
    if state not in RUNNING_STATES:
        return None
    return InstanceRef(str(resource.id), str(getattr(resource, "OS-EXT-SRV-ATTR:instance_name",
                                                     "")), mbm_priority(resource))


def mbm_priority(resource: Any) -> int:
    """``cmt:mbm_priority`` of a discovered instance: its server metadata
    (ceilometer fetches it with ``[compute] fetch_extra_metadata``), else its
    flavor's extra specs (in libvirt's Nova metadata from 2025.2); 0 without
    (:mod:`instance_settings` reads it, as it reads the guard's opt-out)."""
    return instance_settings.mbm_priority(resource)


def cycle(rt: Runtime, cache: dict[str, Any], instances: list[Any], *,
          counting: bool = True) -> CycleResult:
    """The cycle's one backend read, shared through ``cache`` (one per source
    and cycle). Its counters are counted when a per-instance pollster asks
    (``counting``), also after a host pollster of the same source read first;
    a source of host meters alone leaves them to the per-instance source."""
    assert rt.monitor is not None
    with rt.monitor.lock:
        result: CycleResult | None = cache.get(CACHE_KEY)
        if result is None:
            refs = [r for r in (instance_ref(i) for i in instances) if r is not None]
            result = cache[CACHE_KEY] = rt.monitor.poll(refs, counting=False)
        if counting:
            rt.monitor.count(result)
    return result
