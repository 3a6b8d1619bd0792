"""The libvirt backend: what libvirt already measures, read in ONE call.

Every :meth:`LibvirtBackend.sync` makes exactly one
``virConnectGetAllDomainStats`` call for all domains and all meters (groups
state, cpu-total, perf and memory; see :mod:`ceilometer_cmt.backends.libvirt.stats`
for the keys). Domains are matched to instances by libvirt UUID (Nova uses
the instance uuid), then by domain name. The host cache comes from
``virConnectGetCapabilities`` (fetched once per connection), else sysfs.

Which connection a cycle uses is decided by a ``connect`` callable, called
at the start of every cycle: it returns the live connection it holds, or opens
a new one when that one is no longer alive. In the agent it is ceilometer's
own ``refresh_libvirt_connection`` and the errors that mean "disconnected"
are told by ceilometer's ``is_disconnection_exception``
(:func:`ceilometer_cmt.pollsters.runtime.libvirt_connector` hands both in as
plain callables); the demo, the CLI and the benchmarks use
:class:`Reconnecting`, the same rule in plain Python.

A dropped connection (libvirtd restarted, socket gone) never raises out of
``sync``: that cycle reports every instance unmonitored, one WARNING is
logged, and the next cycle's ``connect`` opens a new connection. There is no
retry within a cycle (ceilometer's ``retry_on_disconnect`` would sleep 3 s and
6 s inside the polling cycle).

Plain Python: no ceilometer/oslo imports; ``libvirt`` (libvirt-python) is
imported lazily so that the rest of the plugin works without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ceilometer_cmt.backends.libvirt import stats as libvirt_stats
from ceilometer_cmt.errors import BackendUnavailable
from ceilometer_cmt.linux.sysfs_cache import read_host_cache
from ceilometer_cmt.readings import BackendCycle, Decision, HostCache, InstanceRef

LOG = logging.getLogger(__name__)

#: Opens a connection for a URI; returns an object with libvirt's
#: ``virConnect`` methods (getAllDomainStats, getCapabilities, isAlive, close).
ConnectionFactory = Callable[[str], Any]
#: The connection to use now: the one held while it is alive, else a new one
#: (ceilometer's ``refresh_libvirt_connection`` rule). Raises libvirtError
#: (or OSError) when none can be opened.
Connect = Callable[[], Any]
#: Whether an error of a libvirt call means the connection is gone.
IsDisconnected = Callable[[BaseException], bool]


def _default_factory(uri: str) -> Any:
    import libvirt

    return libvirt.openReadOnly(uri)


def _libvirt_error() -> type[Exception]:
    try:
        import libvirt
    except ImportError:  # only reached with an injected factory
        return OSError
    err: type[Exception] = libvirt.libvirtError
    return err


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except Exception:  # noqa: BLE001 - any failure (a closed connection raises) = not usable
        return False


def _never(_e: BaseException) -> bool:
    return False


class Reconnecting:
    """A :data:`Connect` without ceilometer: keeps one connection, opens a new
    one through ``opener`` when it is no longer alive and closes the dead one."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._open = opener
        self._conn: Any = None

    def __call__(self) -> Any:
        conn = self._conn
        if conn is None or not _alive(conn):
            self._conn = None
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - a dead connection may refuse to close
                    pass
            conn = self._conn = self._open()
        return conn


class LibvirtBackend:
    """Readings from libvirt's bulk domain stats."""

    name = "libvirt"

    def __init__(
        self,
        uri: str,
        *,
        sysfs_root: str = "/sys",
        connection_factory: ConnectionFactory | None = None,
        connect: Connect | None = None,
        is_disconnected: IsDisconnected | None = None,
        connect_now: bool = True,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """``connect`` (see :data:`Connect`) wins over ``connection_factory``
        (a URI -> new connection, wrapped in :class:`Reconnecting`); with
        neither, libvirt.openReadOnly(uri). A connection ``connect`` returns is
        owned by it: the backend only closes the one it holds in :meth:`close`,
        which ends the backend."""
        if connect is None and connection_factory is None:
            try:
                import libvirt  # noqa: F401
            except ImportError as e:
                raise BackendUnavailable(
                    "libvirt backend needs libvirt-python (pip install libvirt-python)") from e
        self.uri = uri
        self.sysfs_root = sysfs_root
        if connect is None:
            factory = connection_factory or _default_factory
            connect = Reconnecting(lambda: factory(uri))
        self._connect_fn = connect
        self._is_disconnected = is_disconnected or _never
        self._error = _libvirt_error()
        self._warn = warn or LOG.warning
        self._conn: Any = None  # the connection the last cycle used
        self._host_cache: HostCache | None = None
        self._lost = False  # a WARNING was logged and no cycle has succeeded since
        #: the error of the failing stats call already logged, until one succeeds
        self._stats_error: str | None = None
        #: Number of getAllDomainStats calls made (tests assert one per cycle).
        self.stats_calls = 0
        #: Number of distinct connections used (1 + reconnections).
        self.connects = 0
        if connect_now:
            try:
                self._connect()
            except self._error as e:
                raise BackendUnavailable(f"cannot connect to libvirt at {uri}: {e}") from e

    # connection -------------------------------------------------------------
    def _connect(self) -> Any:
        """The connection for this call: ``connect``'s answer, noticing a new one."""
        conn = self._connect_fn()
        if conn is not self._conn:
            self._conn = conn
            self.connects += 1
            self._host_cache = None  # the capabilities are fetched once per connection
            if self._lost:
                LOG.info("reconnected to libvirt at %s", self.uri)
        return conn

    def _drop(self, why: str) -> None:
        # Neither closed nor forgotten here: ``connect`` owns it and replaces it
        # when it is not alive; if it answers again, it is the same connection.
        self._host_cache = None
        if not self._lost:
            self._lost = True
            self._warn(f"libvirt connection to {self.uri} lost ({why}); "
                       "instances are unmonitored until it is re-opened on the next cycle")

    def _all_stats(self) -> list[tuple[Any, dict[str, object]]] | str:
        """One bulk stats call, or the reason there is no answer this cycle."""
        try:
            conn = self._connect()
        except self._error as e:
            self._drop(f"cannot connect: {e}")
            return f"libvirt unreachable at {self.uri}: {e}"
        self.stats_calls += 1
        try:
            records = conn.getAllDomainStats(libvirt_stats.STATS_GROUPS, 0)
        except self._error as e:
            if self._disconnected(e) or not _alive(conn):
                self._drop(str(e))
                return f"libvirt connection lost: {e}"
            if str(e) != self._stats_error:  # once per error, not every cycle
                self._stats_error = str(e)
                LOG.warning("libvirt getAllDomainStats failed: %s (not logged again "
                            "until it changes or a call succeeds)", e)
            return f"libvirt stats call failed: {e}"
        self._lost = False
        if self._stats_error is not None:
            self._stats_error = None
            LOG.info("libvirt getAllDomainStats answers again")
        return list(records)

    def _disconnected(self, e: Exception) -> bool:
        try:
            return bool(self._is_disconnected(e))
        except Exception:  # noqa: BLE001 - a failing classifier must not end the cycle
            LOG.debug("is_disconnected failed on %r", e, exc_info=True)
            return False

    # Backend protocol ---------------------------------------------------------
    def host_cache(self) -> HostCache:
        if self._host_cache is not None:
            return self._host_cache
        caps: HostCache | None = None
        try:
            xml = self._connect().getCapabilities()
            caps = libvirt_stats.parse_capabilities_cache(xml)
        except self._error as e:
            LOG.debug("libvirt capabilities unavailable (%s); using sysfs", e)
        except ValueError as e:
            LOG.warning("bad libvirt capabilities XML (%s); using sysfs", e)
        if caps is None:
            return read_host_cache(self.sysfs_root)
        self._host_cache = caps
        return caps

    def sync(self, instances: Sequence[InstanceRef]) -> BackendCycle:
        cycle = BackendCycle()
        answer = self._all_stats()
        if isinstance(answer, str):
            cycle.unmonitored = {i.uuid: answer for i in instances}
            return cycle
        # name() only reads the virDomain object (no RPC); it is the cheapest
        # accessor, so match by domain name and look at UUIDs only for the
        # instances whose name libvirt does not know.
        by_name: dict[str, tuple[Any, dict[str, object]]] = {}
        used = 0
        has_keys = libvirt_stats.has_cache_keys
        for dom, params in answer:
            by_name[dom.name()] = (dom, params)
            if has_keys(params):
                used += libvirt_stats.monitors_in(params)
        by_uuid: dict[str, tuple[Any, dict[str, object]]] | None = None
        for inst in instances:
            rec = by_name.get(inst.domain_name)
            if rec is None:
                if by_uuid is None:
                    by_uuid = {dom.UUIDString().lower(): (dom, params) for dom, params in answer}
                rec = by_uuid.get(inst.uuid.lower())
            if rec is None:
                cycle.unmonitored[inst.uuid] = "no such libvirt domain"
                continue
            dom, params = rec
            if not has_keys(params):  # the common case on a stock host: no parsing
                cycle.unmonitored[inst.uuid] = (libvirt_stats.state_reason(
                    params.get("state.state")) or libvirt_stats.REASON_NO_DATA)
                continue
            stats = libvirt_stats.parse_domain_stats(params)
            if not libvirt_stats.is_active(stats.state) or not stats.has_data:
                cycle.unmonitored[inst.uuid] = libvirt_stats.no_data_reason(stats)
                continue
            cycle.readings[inst.uuid] = libvirt_stats.to_reading(
                stats, f"libvirt:{self._domain_id(dom)}")
        cycle.monitors_used = used
        return cycle

    @staticmethod
    def _domain_id(dom: Any) -> str:
        # The runtime id changes at every domain start, when qemu's resctrl
        # groups and perf counters restart from zero: a new counter key.
        try:
            return str(dom.ID())
        except Exception:  # noqa: BLE001
            return "?"

    def domains_with_cache_data(self) -> int:
        """How many running domains report cache data (for ``auto``)."""
        answer = self._all_stats()
        if isinstance(answer, str):
            return 0
        n = 0
        for _dom, params in answer:
            stats = libvirt_stats.parse_domain_stats(params)
            if stats.has_cache_data and libvirt_stats.is_active(stats.state):
                n += 1
        return n

    def auto_decision(self) -> Decision:
        """May ``auto`` take this backend? Only if some running domain reports
        cache data: libvirt alone, without a ``<monitor>`` or the perf event
        ``cmt``, has no cache meter to give."""
        n = self.domains_with_cache_data()
        if not n:
            return Decision(self.name, False, "no libvirt domain reports cache data "
                            "(no <monitor> or perf event cmt)")
        return Decision(self.name, True, f"{n} domain(s) report cache data")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
