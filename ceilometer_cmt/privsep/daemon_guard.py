"""Starting the privsep daemon, and saying clearly why when it cannot start.

Two things the bare :class:`ceilometer_cmt.privsep.entrypoints.PrivsepOps` lacks:

- ceilometer parses its configuration into its own ``ConfigOpts``, never into
  ``cfg.CONF``, while oslo.privsep reads its ``[cmt_privsep]`` section from
  ``cfg.CONF``: :func:`configure` copies the agent's section over, so that
  ``helper_command`` (and ``user``/``group``) in ceilometer.conf are honoured.
  Unset, ``helper_command`` is :data:`DEFAULT_HELPER` (the plugin's own helper
  with the daemon's own config file), never oslo.privsep's default, which
  would hand the agent's config files to root;
- when the daemon cannot start, oslo.privsep raises (``FailedToDropPrivileges``
  "exited non-zero (1)", or ``FileNotFoundError`` from ``Popen``) on every
  call: :class:`GuardedOps` logs one error naming the helper command and what
  to do, and every instance becomes unmonitored with that reason (``NotMonitored``)
  instead of each pollster failing. It tries again at most every ``retry`` seconds.

:class:`GuardedCounters` does the same for the perf backend's counters in the
daemon; given the resctrl ops' guard it shares it (one daemon, one error);
:class:`GuardedCatOps` for the guard service's CAT writes.
"""

from __future__ import annotations

import copy
import errno
import logging
import shlex
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ceilometer_cmt.backends.perf.abi import EventSpec
from ceilometer_cmt.backends.resctrl.fs import ResctrlOps
from ceilometer_cmt.errors import CmtError, InstanceGone, NotMonitored
from ceilometer_cmt.options import DAEMON_CONFIG

if TYPE_CHECKING:
    from ceilometer_cmt.backends.perf.counter_providers import CounterProvider
    from ceilometer_cmt.guard.ops import CatOps

LOG = logging.getLogger(__name__)
SECTION = "cmt_privsep"
#: options copied from the agent's config to cfg.CONF (capabilities stay the context's)
COPIED = ("helper_command", "user", "group", "thread_pool_size", "logger_name",
          "log_daemon_traceback")
T = TypeVar("T")
#: what the shipped sudoers rule allows (etc/sudoers.d/ceilometer-cmt)
DEFAULT_HELPER = f"sudo ceilometer-cmt-privsep-helper --config-file {DAEMON_CONFIG}"


def configure(conf: Any) -> None:
    """Register ``[cmt_privsep]`` on the agent's ``conf`` and hand its values
    to oslo.privsep (which reads ``cfg.CONF``). Idempotent."""
    from oslo_config import cfg
    from oslo_privsep import priv_context

    import ceilometer_cmt.privsep.entrypoints  # noqa: F401  (registers the section on cfg.CONF)

    if conf is not cfg.CONF:
        try:
            conf.register_opts(copy.deepcopy(priv_context.OPTS), group=SECTION)
        except cfg.DuplicateOptError:
            pass  # configured before (resctrl ops and perf counters share the section)
    for name in COPIED:
        value = conf[SECTION][name]
        if name == "helper_command" and not value:
            value = DEFAULT_HELPER
        if value is not None and value != cfg.CONF[SECTION][name]:
            cfg.CONF.set_override(name, value, group=SECTION)


def helper_argv() -> list[str]:
    """The command oslo.privsep will run, without its socket arguments."""
    from ceilometer_cmt.privsep.entrypoints import cmt_pctxt

    return cmt_pctxt.helper_command("SOCK")[:-4]


def why_not_started(exc: BaseException, argv: list[str]) -> str:
    cmd = shlex.join(argv)
    what = f"the privsep daemon did not start: helper command '{cmd}'"
    exe = argv[0] if argv else ""
    if isinstance(exc, OSError) or (exe and shutil.which(exe) is None):
        what += f" cannot be run ({exe} not found or not executable)"
    else:
        what += f" failed ({exc})"
    if exe == "sudo" or exe.endswith("/sudo"):
        what += "; the agent's user needs a sudoers (or rootwrap) rule for privsep-helper"
    return (what + "; set [cmt_privsep] helper_command, or [cmt] privsep = never with "
            "the agent running as root")


class DaemonGuard:
    """Starts the daemon before the first call; names it once when it cannot."""

    def __init__(self, *, retry: float = 300.0, start: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry = retry
        self._start = start or _start_context
        self._clock = clock
        self._lock = threading.Lock()
        self._started = False
        self._failed_at: float | None = None
        self.reason: str | None = None

    def ready(self) -> None:
        """Return once the daemon runs; NotMonitored (with the reason) when not."""
        with self._lock:
            if self._started:
                return
            if self._failed_at is not None and self._clock() - self._failed_at < self.retry:
                raise NotMonitored(str(self.reason))
            try:
                self._start()
            except Exception as e:  # FailedToDropPrivileges, OSError from Popen, ...
                first = self.reason is None
                self.reason = why_not_started(e, helper_argv())
                self._failed_at = self._clock()
                if first:
                    LOG.error("ceilometer-cmt: %s. Instances stay unmonitored until it "
                              "starts (retried every %.0f s).", self.reason, self.retry)
                raise NotMonitored(self.reason) from e
            if self.reason is not None:
                LOG.info("ceilometer-cmt: the privsep daemon started")
            self._started = True
            self.reason = None

    _ready = ready

    @property
    def started(self) -> bool:
        return self._started


class GuardedOps(DaemonGuard):
    """:class:`ResctrlOps` that start the daemon first and fail cleanly."""

    def __init__(self, ops: ResctrlOps, *, retry: float = 300.0,
                 start: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(retry=retry, start=start, clock=clock)
        self.ops = ops

    def _call(self, fn: Callable[[], T]) -> T:
        self._ready()
        return fn()

    def mkdir(self, path: str) -> None:
        self._call(lambda: self.ops.mkdir(path))

    def rmdir(self, path: str) -> None:
        try:
            self._ready()
        except NotMonitored as e:  # remove_groups handles OSError only
            raise PermissionError(1, str(e)) from e
        self.ops.rmdir(path)

    def write_tasks(self, tasks_path: str, tids: list[int],
                    domain_name: str = "") -> list[tuple[int, int]]:
        return self._call(lambda: self.ops.write_tasks(tasks_path, tids, domain_name))

    def write_assignments(self, group_path: str, lines: list[str]) -> list[tuple[str, int]]:
        return self._call(lambda: self.ops.write_assignments(group_path, lines))

    def kept_free(self) -> dict[int, int]:
        return self._call(self.ops.kept_free)


class GuardedCatOps:
    """The guard's :class:`~ceilometer_cmt.guard.ops.CatOps` in the daemon
    (:class:`~ceilometer_cmt.privsep.cat_entrypoints.PrivsepCatOps`) that
    start it first. The protocol's errors are OSError with a ``strerror``:
    while the daemon cannot start, PermissionError with the reason; the
    daemon's refusals (which privsep rebuilds without an errno) get theirs
    (EPERM); a guest gone meanwhile is ESRCH; a broken channel EIO."""

    def __init__(self, ops: CatOps, guard: DaemonGuard | None = None) -> None:
        self.ops = ops
        self.guard = guard if guard is not None else DaemonGuard()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            self.guard.ready()
        except NotMonitored as e:
            raise PermissionError(errno.EPERM, str(e)) from e
        try:
            return fn()
        except OSError as e:
            if e.strerror is None:
                raise type(e)(e.errno or errno.EPERM, str(e)) from e
            raise
        except InstanceGone as e:
            raise ProcessLookupError(errno.ESRCH, str(e)) from e
        except Exception as e:  # the channel to the daemon broke
            raise OSError(errno.EIO, f"privsep daemon: {type(e).__name__}: {e}") from e

    def make_ctrl_group(self, ctrl: str) -> None:
        self._call(lambda: self.ops.make_ctrl_group(ctrl))

    def remove_ctrl_group(self, ctrl: str) -> None:
        self._call(lambda: self.ops.remove_ctrl_group(ctrl))

    def write_schemata(self, ctrl: str, lines: list[str]) -> None:
        self._call(lambda: self.ops.write_schemata(ctrl, lines))

    def move_threads(self, ctrl: str, uuid: str, domain_name: str,
                     tids: list[int]) -> list[tuple[int, int]]:
        return self._call(lambda: list(self.ops.move_threads(ctrl, uuid, domain_name, tids)))


class GuardedCounters:
    """A :class:`~ceilometer_cmt.backends.perf.counter_providers.CounterProvider` in the daemon that
    starts it first: instances stay unmonitored with the reason while it cannot
    start; a failing channel becomes NotMonitored (open) or OSError (read)."""

    def __init__(self, counters: CounterProvider, guard: DaemonGuard | None = None) -> None:
        self.counters = counters
        self.guard = guard if guard is not None else DaemonGuard()

    def open(self, specs: Sequence[EventSpec], pid: int, tid: int,
             domain_name: str) -> list[int]:
        self.guard.ready()
        try:
            return self.counters.open(specs, pid, tid, domain_name)
        except (CmtError, OSError, ValueError):
            raise
        except Exception as e:  # the channel to the daemon broke
            raise NotMonitored(f"privsep daemon: {type(e).__name__}: {e}") from e

    def read(self, handles: Sequence[int]) -> bytes:
        if not handles:
            return b""
        try:
            return self.counters.read(handles)
        except OSError:
            raise
        except Exception as e:
            raise OSError(errno.EIO, f"privsep daemon: {type(e).__name__}: {e}") from e

    def close(self, handles: Sequence[int]) -> None:
        if handles and self.guard.started:
            self.counters.close(handles)

    def probe(self, specs: Sequence[EventSpec]) -> None:
        self.guard.ready()
        self.counters.probe(specs)


def _start_context() -> None:
    from ceilometer_cmt.privsep.entrypoints import cmt_pctxt

    if cmt_pctxt.channel is None or not cmt_pctxt.channel.running:
        cmt_pctxt.stop()
        cmt_pctxt.start()
