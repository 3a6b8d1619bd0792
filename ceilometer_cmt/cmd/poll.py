"""Run real polling cycles in-process through ceilometer's own polling manager.

The compute namespace is loaded exactly as ``ceilometer-polling`` loads it
(entry points, discovery, polling.yaml); samples are published to the
in-memory ``test`` notifier over the ``fake://`` transport and returned.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: option overrides for :func:`polling_agent`: ``{(group, name): value}``
Overrides = dict[tuple[str | None, str], Any]


def set_item(item: str) -> tuple[str, str]:
    """One ``--set NAME=VALUE`` (an argparse ``type``): NAME must be a ``[cmt]``
    option and VALUE valid for it (as ``set_override`` would check it); nothing
    is stripped. Anything else is a usage error, exit status 2."""
    from ceilometer_cmt import options

    opts = {o.name: o for o in options.OPTS}
    name, sep, value = item.partition("=")
    try:
        if not sep:
            raise ValueError("no '='")
        if name not in opts:
            raise ValueError(f"no [cmt] option {name!r}")
        if opts[name].type(value) is None:  # raises the ValueError set_override would
            raise ValueError("no value")  # oslo's Integer('') is None, not an error
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"takes NAME=VALUE with NAME a [cmt] option ({', '.join(opts)}), "
            f"not {item!r}: {e}") from None
    return name, value


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set NAME=VALUE``, repeatable; the parsed value is a list of pairs."""
    parser.add_argument("--set", action="append", default=[], type=set_item,
                        metavar="NAME=VALUE", help=f"override a [cmt] option, e.g. --set {example}")


def cmt_overrides(pairs: Sequence[tuple[str, str]]) -> Overrides:
    """``--set`` pairs as ``[cmt]`` overrides (the last value of a name wins)."""
    from ceilometer_cmt import options

    return {(options.GROUP, name): value for name, value in pairs}


def write_default_polling_file(directory: str) -> str:
    """Every meter of the table in one source, written into ``directory``."""
    from ceilometer_cmt import meters

    path = os.path.join(directory, "polling.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(meters.polling_yaml(sources=(meters.ALL_IN_ONE_SOURCE,)))
    return path


@contextmanager
def polling_agent(config_files: Sequence[str], polling_file: str | None = None,
                  overrides: Overrides | None = None, work_dir: str | None = None
                  ) -> Iterator[Any]:
    """A ceilometer AgentManager for the compute namespace, publishing in memory.

    Its scratch directory (config, polling file, heartbeat socket) is made in
    ``work_dir``, or in the system's temporary directory. A caller that can be
    stopped by a signal at any point passes a directory it removes itself: a
    signal between ``mkdtemp`` and the end of ``TemporaryDirectory()`` would
    leave the scratch directory behind.
    """
    from ceilometer import service
    from ceilometer.polling import manager as polling_manager
    from oslo_config import cfg

    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    with tempfile.TemporaryDirectory(prefix="cmt-poll-", dir=work_dir) as tmp:
        # Given as a last config file, not as overrides: transport_url and the
        # notifier options are registered only when the agent opens its transport.
        extra = os.path.join(tmp, "cmt-poll.conf")
        with open(extra, "w", encoding="utf-8") as f:
            # oslo.log logs to stdout when nothing else is configured: keep the
            # samples alone there.
            stderr = "" if _logs_elsewhere(config_files) else "use_stderr = true\n"
            f.write(f"[DEFAULT]\ntransport_url = fake://\n{stderr}"
                    "[publisher_notifier]\ntelemetry_driver = test\n"
                    f"[polling]\ncfg_file = {polling_file or write_default_polling_file(tmp)}\n"
                    f"heartbeat_socket_dir = {tmp}\n")
        argv = ["ceilometer-cmt"]
        for cf in [*config_files, extra]:
            argv += ["--config-file", cf]
        conf = service.prepare_service(argv, [], conf=cfg.ConfigOpts())
        from ceilometer_cmt import options

        options.register_opts(conf)  # so that [cmt] overrides apply before pollsters load
        for (group, name), value in (overrides or {}).items():
            conf.set_override(name, value, group=group)
        agent = polling_manager.AgentManager(0, conf, ["compute"])
        agent.polling_manager = polling_manager.PollingManager(conf)
        try:
            yield agent
        finally:
            from ceilometer_cmt.pollsters import runtime

            runtime.reset()
            # oslo.log set up the root logger for this agent (maybe a file in
            # a directory about to go): leave logging as it was before.
            for h in root_logger.handlers:
                if h not in handlers:
                    h.close()
            root_logger.handlers[:] = handlers
            root_logger.setLevel(level)


def _logs_elsewhere(config_files: Sequence[str]) -> bool:
    """True when the given config files already send logs somewhere else."""
    from oslo_config import cfg
    from oslo_log import log

    probe = cfg.ConfigOpts()
    log.register_options(probe)
    probe(args=[], default_config_files=list(config_files))
    return bool(probe.log_file or probe.log_config_append or probe.use_stderr
                or probe.use_journal or probe.use_syslog)


def run_cycles(agent: Any, cycles: int) -> list[list[dict[str, Any]]]:
    """Poll every task ``cycles`` times; one list of sample dicts per cycle."""
    from oslo_messaging.notify import _impl_test

    tasks = agent.setup_polling_tasks()
    out = []
    for _ in range(cycles):
        _impl_test.reset()
        for _interval, task in sorted(tasks.items()):
            task.poll_and_notify()
        samples: list[dict[str, Any]] = []
        for notification in _impl_test.NOTIFICATIONS:
            samples.extend(notification[1]["payload"]["samples"])
        out.append(samples)
    return out


def poll(config_files: Sequence[str], cycles: int = 1, polling_file: str | None = None,
         overrides: Overrides | None = None
         ) -> list[list[dict[str, Any]]]:
    with polling_agent(config_files, polling_file, overrides) as agent:
        return run_cycles(agent, cycles)


def sample_row(s: dict[str, Any]) -> dict[str, Any]:
    return {"name": s["counter_name"], "type": s["counter_type"], "unit": s["counter_unit"],
            "volume": s["counter_volume"], "resource_id": s["resource_id"],
            "project_id": s.get("project_id"), "user_id": s.get("user_id"),
            "timestamp": s.get("timestamp"),
            "resource_metadata": s.get("resource_metadata") or {}}


def env_config_files() -> list[str]:
    files = os.environ.get("CEILOMETER_CMT_CONFIG", "")
    return [f for f in files.split(os.pathsep) if f]
