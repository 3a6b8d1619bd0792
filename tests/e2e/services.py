"""The OpenStack telemetry services, started for real on loopback, for end-to-end tests.

Every service is a context manager: it runs in its own temporary directory,
binds to 127.0.0.1 only, and on exit (pass or fail) is stopped and its
directory removed. ``telemetry_stack()`` starts them all in order:

  PostgreSQL (Debian; ``initdb``/``pg_ctl`` as the ``postgres`` user)
  RabbitMQ (Debian 3.10, started by hand; its own epmd on a private port)
  Gnocchi 4.7.1 API (uwsgi) + metricd, file storage, indexer on PostgreSQL
  ceilometer-upgrade (Gnocchi resource types)
  ceilometer-agent-notification: RabbitMQ -> gnocchi:// with our resource map
  Aodh 23.0.0 API (uwsgi, noauth) + evaluator + notifier
  a webhook listener recording what Aodh posts

Gnocchi and Aodh run from their own virtualenv (``scripts/install-telemetry.sh``,
default ``<repo>/.venv-telemetry``, or ``$CMT_TELEMETRY_VENV``); ceilometer runs
from the interpreter running the tests, where ceilometer-cmt is installed.

Processes are started in their own session and stopped by their process
group: SIGINT first (uwsgi masters hang on SIGTERM with keep-alive
connections), then SIGKILL.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import importlib.util
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ceilometer_cmt.testing.wait import wait_until
from tests.support.as_user import public_workdir

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


def _pg_bin() -> Path:
    """Debian's PostgreSQL server binaries, of the newest installed major version."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else -1)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
CEILOMETER_BIN = Path(sys.executable).parent
#: ceilometer's own event definitions, and ours that operators append to them
PACKAGED_EVENT_DEFINITIONS = Path(
    str(getattr(importlib.util.find_spec("ceilometer"), "origin", ""))).parent \
    / "pipeline" / "data" / "event_definitions.yaml"
EVENT_DEFINITIONS = REPO / "etc" / "ceilometer" / "cmt_event_definitions.yaml"
PUSH_SAMPLES = Path(__file__).with_name("push_samples.py")

# Seconds each start step took, filled as services come up (for reports).
TIMINGS: dict[str, float] = {}


class ServiceError(RuntimeError):
    """A service did not start or answer; the message carries its log's tail."""


def telemetry_venv() -> Path:
    return Path(os.environ.get("CMT_TELEMETRY_VENV", REPO / ".venv-telemetry"))


def missing_requirements(venv: Path | None = None) -> list[str]:
    """What this machine lacks to run the stack (empty when everything is there)."""
    venv = venv or telemetry_venv()
    wanted = [PG_BIN / "initdb", PG_BIN / "pg_ctl", RABBIT_BIN / "rabbitmq-server",
              venv / "bin" / "uwsgi", venv / "bin" / "gnocchi-upgrade",
              venv / "bin" / "gnocchi-metricd", venv / "bin" / "aodh-api",
              venv / "bin" / "aodh-evaluator", venv / "bin" / "aodh-listener",
              CEILOMETER_BIN / "ceilometer-agent-notification"]
    return [str(p) for p in wanted if not p.exists()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- {path} ---\n" + "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    TIMINGS[name] = round(time.monotonic() - start, 2)


def wait_for(what: str, predicate: Callable[[], Any], timeout: float,
             interval: float = 0.25, logs: Sequence[Path] = (),
             daemons: Sequence[Daemon] = ()) -> Any:
    """Poll ``predicate`` until it returns something truthy; ServiceError on timeout.

    Fails at once, with its log, when one of ``daemons`` has exited.
    """
    def exited() -> None:
        for daemon in daemons:
            daemon.check_alive()

    return wait_until(predicate, what=what, timeout=timeout, interval=interval, fail=exited,
                      error=lambda msg: ServiceError(
                          msg + "\n" + "\n".join(tail(p) for p in logs)))


@dataclass
class Daemon:
    """A process started in its own session, logging to a file."""

    name: str
    argv: Sequence[str]
    log: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None
    stop_signal: int = signal.SIGINT
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                list(self.argv), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=dict(self.env) if self.env else None,
                cwd=self.cwd, user=self.user, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise ServiceError(f"{self.name} exited with {code}\n{tail(self.log)}")

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None:
            return
        with timed(f"stop {self.name}"):
            self._stop(timeout)

    def _stop(self, timeout: float) -> None:
        assert self.proc is not None
        pgid = self.proc.pid  # start_new_session: the process group id is its pid
        for sig, wait in ((self.stop_signal, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; give the rest of its group a moment, then kill it
            deadline = time.monotonic() + 3
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def run(argv: Sequence[str], log: Path, timeout: float = 120, env: Mapping[str, str] | None = None,
        user: str | None = None, cwd: Path | None = None) -> None:
    """Run a command to completion, output appended to ``log``; ServiceError on failure."""
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=dict(env) if env else None,
                                  user=user, cwd=cwd, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise ServiceError(f"{argv[0]} timed out after {timeout}s\n{tail(log)}") from e
    if proc.returncode != 0:
        raise ServiceError(f"{' '.join(argv)} exited with {proc.returncode}\n{tail(log)}")


def write_ini(path: Path, sections: Mapping[str, Mapping[str, object]]) -> Path:
    lines: list[str] = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        for key, value in options.items():
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, bool):
                    v = "true" if v else "false"
                lines.append(f"{key} = {v}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@contextlib.contextmanager
def workdir(prefix: str, owner: str | None = None) -> Iterator[Path]:
    """A fresh directory in a public place (/tmp, whatever TMPDIR says: the
    ``postgres`` user must reach it, see tests/support/as_user.py), owned by ``owner``
    if given, removed at the end whatever happens."""
    with public_workdir(f"cmt-e2e-{prefix}-") as path:
        if owner:
            pw = pwd.getpwnam(owner)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        yield Path(path)


def http_json(method: str, url: str, body: object | None = None,
              headers: Mapping[str, str] | None = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        raise ServiceError(f"{method} {url} -> {e.code}: {detail}") from e
    return json.loads(raw) if raw else None


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= int(resp.status) < 500
    except urllib.error.HTTPError as e:
        return 200 <= e.code < 500
    except OSError:
        return False


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    port: int
    datadir: Path
    log: Path

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://postgres@{LOOPBACK}:{self.port}/{database}"

    def createdb(self, name: str) -> None:
        run([str(PG_BIN / "createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres",
             name], self.log.with_name("createdb.log"))


@contextlib.contextmanager
def postgresql() -> Iterator[Postgres]:
    """A PostgreSQL cluster owned by ``postgres`` (initdb refuses root), trust auth, loopback."""
    with workdir("pg", owner="postgres") as base:
        datadir, log = base / "data", base / "postgres.log"
        port = free_port()
        try:
            with timed("postgresql"):
                run([str(PG_BIN / "initdb"), "-D", str(datadir), "-A", "trust", "-U",
                     "postgres", "--no-sync", "-E", "UTF8"], base / "initdb.log",
                    user="postgres")
                opts = (f"-p {port} -k {base} -c listen_addresses={LOOPBACK} -c fsync=off "
                        "-c synchronous_commit=off -c full_page_writes=off")
                run([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-o", opts, "-l", str(log),
                     "-w", "-t", "60", "start"], base / "pg_ctl.log", user="postgres")
            yield Postgres(port=port, datadir=datadir, log=log)
        finally:
            with contextlib.suppress(ServiceError):
                run([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w",
                     "stop"], base / "pg_ctl.log", user="postgres", timeout=30)
            # if pg_ctl could not stop it, kill the postmaster named in its pid file
            _kill_pidfile(datadir / "postmaster.pid")


def _kill_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- RabbitMQ


@dataclass
class Rabbit:
    port: int
    env: dict[str, str]
    base: Path

    @property
    def url(self) -> str:
        return f"rabbit://guest:guest@{LOOPBACK}:{self.port}/"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise ServiceError(f"rabbitmqctl {' '.join(args)}: {proc.stderr}{proc.stdout}")
        return proc.stdout

    def consumers(self, queue: str) -> int:
        for line in self.ctl("list_queues", "-q", "--no-table-headers",
                             "name", "consumers").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        return 0


@contextlib.contextmanager
def rabbitmq(attempts: int = 3) -> Iterator[Rabbit]:
    """RabbitMQ on loopback with a private node name, epmd port and data dir.

    A node that does not come up (seen once in ~20 runs on a loaded 2-core
    machine: ``rabbit_is_not_running``) is stopped, removed and started again
    with fresh ports and data; the last failure carries the node's logs."""
    for attempt in range(1, attempts + 1):
        try:
            with _rabbitmq_once() as rabbit:
                yield rabbit
                return
        except _RabbitDidNotStart as e:
            if attempt == attempts:
                raise ServiceError(str(e)) from None


class _RabbitDidNotStart(Exception):
    pass


def _logs(base: Path) -> str:
    out = []
    for f in sorted(base.rglob("*.log")):
        with contextlib.suppress(OSError):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
    return "\n".join(out)


@contextlib.contextmanager
def _rabbitmq_once() -> Iterator[Rabbit]:
    with workdir("rabbitmq") as base:
        (base / "enabled_plugins").write_text("[].\n")
        for name in ("rabbitmq.conf", "rabbitmq-env.conf"):
            (base / name).write_text("")
        port, dist_port, epmd_port = free_port(), free_port(), free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": f"cmt{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
        }
        rabbit = Rabbit(port=port, env=env, base=base)
        server = Daemon("rabbitmq", [str(RABBIT_BIN / "rabbitmq-server")], base / "server.log",
                        env=env, cwd=base, stop_signal=signal.SIGTERM)
        try:
            with timed("rabbitmq"):
                server.start()
                try:
                    rabbit.ctl("wait", "--timeout", "60", env["RABBITMQ_PID_FILE"], timeout=90)
                except (ServiceError, subprocess.TimeoutExpired) as e:
                    raise _RabbitDidNotStart(f"{e}\n{_logs(base)}") from None
            yield rabbit
        finally:
            with contextlib.suppress(ServiceError, subprocess.TimeoutExpired):
                rabbit.ctl("stop", env["RABBITMQ_PID_FILE"], timeout=60)
            server.stop()
            # the node started its own epmd on our private port: stop that one only
            subprocess.run(["epmd", "-port", str(epmd_port), "-kill"], env=env,
                           capture_output=True, timeout=10, check=False)


# ------------------------------------------------------------------------------ Gnocchi


@dataclass
class Gnocchi:
    port: int
    config: Path
    base: Path

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def get(self, path: str) -> Any:
        return http_json("GET", self.endpoint + path, headers=gnocchi_auth())

    def post(self, path: str, body: object) -> Any:
        return http_json("POST", self.endpoint + path, body, headers=gnocchi_auth())


def gnocchi_auth(user: str = "admin") -> dict[str, str]:
    """Gnocchi ``auth_mode = basic``: any user name, empty password; ``admin`` is admin."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def uwsgi_argv(venv: Path, port: int, app: Sequence[str], config: Path) -> list[str]:
    """uwsgi serving HTTP itself (no router process) on loopback.

    uwsgi's http-socket closes the connection after each response; saying so
    keeps clients from reusing it (else: "connection reset by peer" retries).
    """
    return [str(venv / "bin" / "uwsgi"), "--http-socket", f"{LOOPBACK}:{port}",
            "--add-header", "Connection: close",
            "--master", "--processes", "1", "--threads", "4", "--enable-threads",
            "--lazy-apps", "--die-on-term", "--need-app", "--chdir", "/", "-H", str(venv),
            *app, "--pyargv", f"--config-file {config}"]


@contextlib.contextmanager
def gnocchi(pg: Postgres, venv: Path | None = None) -> Iterator[Gnocchi]:
    venv = venv or telemetry_venv()
    with workdir("gnocchi") as base, contextlib.ExitStack() as stack:
        with timed("gnocchi"):
            pg.createdb("gnocchi")
            port = free_port()
            config = write_ini(base / "gnocchi.conf", {
                "DEFAULT": {"debug": False, "use_stderr": True,
                            "coordination_url": pg.url("gnocchi")},
                "api": {"auth_mode": "basic", "host": LOOPBACK, "port": port},
                "indexer": {"url": pg.url("gnocchi", "postgresql+psycopg2")},
                "storage": {"driver": "file", "file_basepath": base / "storage"},
                "incoming": {"driver": "file", "file_basepath": base / "incoming"},
                "metricd": {"workers": 1, "metric_processing_delay": 1,
                            "metric_reporting_delay": -1, "processing_replicas": 1},
            })
            env = {**os.environ, "VIRTUAL_ENV": str(venv)}
            run([str(venv / "bin" / "gnocchi-upgrade"), "--config-file", str(config),
                 "--sacks-number", "8"], base / "upgrade.log", env=env)
            api = stack.enter_context(running(Daemon(
                "gnocchi-api",
                uwsgi_argv(venv, port, ["--module", "gnocchi.rest.wsgi"], config),
                base / "api.log", env=env)))
            metricd = stack.enter_context(running(Daemon(
                "gnocchi-metricd", [str(venv / "bin" / "gnocchi-metricd"), "--config-file",
                                    str(config)], base / "metricd.log", env=env,
                stop_signal=signal.SIGTERM)))
            service = Gnocchi(port=port, config=config, base=base)
            wait_for("gnocchi API", lambda: service.get("/v1/status"), 60, logs=[api.log],
                     daemons=[api])
            metricd.check_alive()
        yield service


# ----------------------------------------------------------------------- ceilometer


@dataclass
class Ceilometer:
    config: Path
    base: Path
    resources_file: Path
    #: every sample the notification agent published, one JSON object a line
    #: (ceilometer's file publisher beside gnocchi://, same sink): the sample
    #: metadata Gnocchi does not keep
    samples_file: Path
    #: every event it published (its event pipeline: to Aodh's ``alarm.all``
    #: topic, and this file), one JSON object a line
    events_file: Path

    def events(self, event_type: str) -> list[dict[str, Any]]:
        """The events of ``event_type`` published so far, oldest first."""
        return [e for e in _json_lines(self.events_file) if e.get("event_type") == event_type]

    def published(self, meter: str, resource_id: str) -> list[dict[str, Any]]:
        """The samples of ``meter`` on ``resource_id`` published so far, oldest first."""
        return [s for s in _json_lines(self.samples_file)
                if s.get("name") == meter and s.get("resource_id") == resource_id]


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The objects of a file ceilometer's file publisher writes a line at a
    time; a line not (yet) whole JSON is skipped, no file is no line."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def ceilometer_config(base: Path, rabbit: Rabbit, gnocchi_endpoint: str,
                      extra: Mapping[str, Mapping[str, object]] | None = None) -> Path:
    """A ceilometer.conf for both agents: RabbitMQ transport, Gnocchi without Keystone."""
    sections: dict[str, dict[str, object]] = {
        "DEFAULT": {"transport_url": rabbit.url, "host": "cmt-e2e-compute",
                    "pipeline_cfg_file": base / "pipeline.yaml", "use_stderr": True},
        "notification": {"workers": 1, "pipelines": ["meter", "event"]},
        "polling": {"cfg_file": base / "polling.yaml"},
        "service_credentials": {"auth_type": "gnocchi-basic", "user": "admin",
                                "endpoint": gnocchi_endpoint},
        "oslo_messaging_rabbit": {"heartbeat_timeout_threshold": 0},
    }
    for section, options in (extra or {}).items():
        sections.setdefault(section, {}).update(options)
    return write_ini(base / "ceilometer.conf", sections)


@contextlib.contextmanager
def ceilometer_notification(rabbit: Rabbit, gnocchi_service: Gnocchi,
                            resources_yaml: str) -> Iterator[Ceilometer]:
    """ceilometer-upgrade, then ceilometer-agent-notification publishing
    samples to gnocchi:// and events to Aodh's listener, with ceilometer's
    packaged event definitions and this plugin's appended
    (etc/ceilometer/cmt_event_definitions.yaml, as it tells operators)."""
    with workdir("ceilometer") as base:
        with timed("ceilometer-notification"):
            resources_file = base / "gnocchi_resources.yaml"
            resources_file.write_text(resources_yaml)
            samples_file = base / "samples.jsonl"
            (base / "pipeline.yaml").write_text(json.dumps({
                "sources": [{"name": "meter_source", "meters": ["*"],
                             "sinks": ["meter_sink"]}],
                "sinks": [{"name": "meter_sink", "publishers": [
                    "gnocchi://?enable_filter_project=false"
                    f"&resources_definition_file={resources_file}",
                    f"file://{samples_file}?json"]}],
            }, indent=2))
            events_file = base / "events.jsonl"
            (base / "event_pipeline.yaml").write_text(json.dumps({
                "sources": [{"name": "event_source", "events": ["*"],
                             "sinks": ["event_sink"]}],
                "sinks": [{"name": "event_sink", "publishers": [
                    "notifier://?topic=alarm.all", f"file://{events_file}?json"]}],
            }, indent=2))
            definitions = base / "event_definitions.yaml"
            definitions.write_text(PACKAGED_EVENT_DEFINITIONS.read_text()
                                   + EVENT_DEFINITIONS.read_text())
            config = ceilometer_config(base, rabbit, gnocchi_service.endpoint, {
                "DEFAULT": {"event_pipeline_cfg_file": base / "event_pipeline.yaml"},
                "event": {"definitions_cfg_file": definitions}})
            run([str(CEILOMETER_BIN / "ceilometer-upgrade"), "--config-file", str(config),
                 "--retry", "3"], base / "upgrade.log")
            agent = Daemon("ceilometer-agent-notification",
                           [str(CEILOMETER_BIN / "ceilometer-agent-notification"),
                            "--config-file", str(config)], base / "notification.log",
                           stop_signal=signal.SIGTERM)
        with running(agent):
            with timed("ceilometer-notification-consuming"):
                for queue in ("notifications.sample", "notifications.info"):
                    wait_for(f"the notification agent to consume {queue}",
                             functools.partial(rabbit.consumers, queue),
                             60, interval=1, logs=[agent.log], daemons=[agent])
            yield Ceilometer(config=config, base=base, resources_file=resources_file,
                             samples_file=samples_file, events_file=events_file)


@dataclass
class PollingAgent:
    config: Path
    base: Path
    daemon: Daemon
    prometheus_port: int

    def scrape(self) -> str:
        """The agent's Prometheus exporter page."""
        url = f"http://{LOOPBACK}:{self.prometheus_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bytes(resp.read()).decode()


@contextlib.contextmanager
def ceilometer_polling(rabbit: Rabbit, polling_yaml: str,
                       extra: Mapping[str, Mapping[str, object]] | None = None,
                       ) -> Iterator[PollingAgent]:
    """A real ``ceilometer-polling --polling-namespaces compute`` on the bus.

    ``extra`` adds config sections (``[cmt]``, ``libvirt_uri``, ...). The
    agent's Prometheus exporter listens on loopback.
    """
    with workdir("polling") as base:
        (base / "polling.yaml").write_text(polling_yaml)
        port = free_port()
        sections: dict[str, dict[str, object]] = {
            "polling": {"enable_prometheus_exporter": True,
                        "prometheus_listen_addresses": f"{LOOPBACK}:{port}"},
        }
        for section, options in (extra or {}).items():
            sections.setdefault(section, {}).update(options)
        # no gnocchi endpoint: the compute agent talks to the bus only
        config = ceilometer_config(base, rabbit, "http://127.0.0.1:9", sections)
        agent = Daemon("ceilometer-polling",
                       [str(CEILOMETER_BIN / "ceilometer-polling"), "--polling-namespaces",
                        "compute", "--config-file", str(config)], base / "polling.log",
                       stop_signal=signal.SIGTERM)
        with running(agent):
            polling = PollingAgent(config=config, base=base, daemon=agent,
                                   prometheus_port=port)
            with timed("ceilometer-polling"):
                wait_for("the polling agent's Prometheus exporter", polling.scrape, 60,
                         logs=[agent.log], daemons=[agent])
            yield polling


def push_samples(ceilometer_conf: Path, samples: Sequence[Mapping[str, Any]],
                 log: Path | None = None) -> None:
    """Send samples over RabbitMQ exactly as ceilometer-polling does (see push_samples.py)."""
    log = log or ceilometer_conf.with_name("push_samples.log")
    with open(log, "ab") as out:
        proc = subprocess.run([sys.executable, str(PUSH_SAMPLES), "--config-file",
                               str(ceilometer_conf)], input=json.dumps(list(samples)).encode(),
                              stdout=out, stderr=subprocess.STDOUT, timeout=60, check=False)
    if proc.returncode != 0:
        raise ServiceError(f"push_samples exited with {proc.returncode}\n{tail(log)}")


# --------------------------------------------------------------------------------- Aodh


@dataclass
class Aodh:
    port: int
    config: Path
    base: Path
    user_id: str = "e2e-user"
    project_id: str = "e2e-project"

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"X-User-Id": self.user_id, "X-Project-Id": self.project_id,
                "X-Roles": "admin"}

    def request(self, method: str, path: str, body: object | None = None) -> Any:
        return http_json(method, self.endpoint + path, body, headers=self.headers())

    def create_alarm(self, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v2/alarms", body)
        return result

    def state(self, alarm_id: str) -> str:
        return str(self.request("GET", f"/v2/alarms/{alarm_id}/state"))

    def history(self, alarm_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", f"/v2/alarms/{alarm_id}/history")
        return result


@contextlib.contextmanager
def aodh(pg: Postgres, rabbit: Rabbit, gnocchi_service: Gnocchi,
         venv: Path | None = None, evaluation_interval: int = 2) -> Iterator[Aodh]:
    venv = venv or telemetry_venv()
    with workdir("aodh") as base, contextlib.ExitStack() as stack:
        with timed("aodh"):
            pg.createdb("aodh")
            port = free_port()
            config = write_ini(base / "aodh.conf", {
                # the listener reads each project's event alarms afresh for
                # each event: no cache to outlive an alarm made just before
                "DEFAULT": {"transport_url": rabbit.url, "use_stderr": True,
                            "event_alarm_cache_ttl": 0},
                "api": {"auth_mode": "noauth"},
                # aodh picks its storage driver by the URL scheme: only plain
                # postgresql:// works, and SQLAlchemy 2.1 maps that to psycopg 3
                "database": {"connection": pg.url("aodh")},
                "evaluator": {"evaluation_interval": evaluation_interval, "workers": 1},
                "notifier": {"workers": 1},
                "listener": {"workers": 1},
                "service_credentials": {"auth_type": "gnocchi-basic", "user": "admin",
                                        "endpoint": gnocchi_service.endpoint},
                "oslo_messaging_rabbit": {"heartbeat_timeout_threshold": 0},
            })
            env = {**os.environ, "VIRTUAL_ENV": str(venv)}
            run([str(venv / "bin" / "aodh-dbsync"), "--config-file", str(config)],
                base / "dbsync.log", env=env)
            api = stack.enter_context(running(Daemon(
                "aodh-api",
                uwsgi_argv(venv, port, ["--wsgi-file", str(venv / "bin" / "aodh-api")],
                           config),
                base / "api.log", env=env)))
            daemons = [api]
            for name in ("aodh-evaluator", "aodh-notifier", "aodh-listener"):
                daemons.append(stack.enter_context(running(Daemon(
                    name, [str(venv / "bin" / name), "--config-file", str(config)],
                    base / f"{name}.log", env=env, stop_signal=signal.SIGTERM))))
            service = Aodh(port=port, config=config, base=base)
            wait_for("aodh API", lambda: service.request("GET", "/v2/alarms") is not None, 60,
                     logs=[api.log], daemons=[api])
            # ceilometer's events reach the listener on alarm.all at "sample"
            wait_for("aodh-listener to consume alarm.all.sample",
                     lambda: rabbit.consumers("alarm.all.sample") > 0, 60, interval=1,
                     logs=[daemons[-1].log], daemons=daemons)
            for d in daemons:
                d.check_alive()
        yield service


# ------------------------------------------------------------------------------ webhook


@dataclass
class Webhook:
    port: int
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{path.lstrip('/')}"

    def wait(self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], bool],
             timeout: float) -> list[tuple[str, dict[str, Any]]]:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.calls), timeout):
                raise ServiceError(f"webhook: condition not met in {timeout}s; "
                                   f"calls: {self.calls!r}")
            return list(self.calls)


@contextlib.contextmanager
def webhook() -> Iterator[Webhook]:
    """An HTTP listener on loopback recording every POST (path, JSON body)."""
    hook = Webhook(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's API
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {"raw": raw.decode(errors="replace")}
            with hook.changed:
                hook.calls.append((self.path, body))
                hook.changed.notify_all()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    hook.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# ------------------------------------------------------------------------ whole stack


@dataclass
class Stack:
    pg: Postgres
    rabbit: Rabbit
    gnocchi: Gnocchi
    ceilometer: Ceilometer
    aodh: Aodh
    webhook: Webhook

    def logs(self) -> list[Path]:
        found: list[Path] = []
        for base in (self.rabbit.base, self.gnocchi.base, self.ceilometer.base, self.aodh.base):
            found.extend(sorted(base.glob("*.log")))
        found.append(self.pg.log)
        return found

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(tail(p, lines) for p in self.logs())

    @contextlib.contextmanager
    def diagnostics(self) -> Iterator[None]:
        """On failure, show the services' logs with the error."""
        try:
            yield
        except BaseException:
            print(self.log_tails())
            raise


@contextlib.contextmanager
def telemetry_stack(resources_yaml: str, venv: Path | None = None) -> Iterator[Stack]:
    """Everything, started in dependency order and stopped in reverse, pass or fail."""
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgresql())
        rabbit = stack.enter_context(rabbitmq())
        gnocchi_service = stack.enter_context(gnocchi(pg, venv))
        ceilometer = stack.enter_context(
            ceilometer_notification(rabbit, gnocchi_service, resources_yaml))
        aodh_service = stack.enter_context(aodh(pg, rabbit, gnocchi_service, venv))
        hook = stack.enter_context(webhook())
        TIMINGS["stack"] = round(time.monotonic() - start, 2)
        yield Stack(pg=pg, rabbit=rabbit, gnocchi=gnocchi_service, ceilometer=ceilometer,
                    aodh=aodh_service, webhook=hook)
        stop = time.monotonic()
    TIMINGS["stack-stop"] = round(time.monotonic() - stop, 2)
