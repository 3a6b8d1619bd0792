"""``ceilometer-cmt top``: its options, and the agent's log kept off the view.

:func:`main` starts a polling agent with the agent's own config files
(:func:`ceilometer_cmt.cmd.poll.polling_agent`) and hands it to
:func:`~ceilometer_cmt.cmd.top.loop.watch`. With the live view on a terminal the
agent logs to a temporary file (:func:`write_log_config`) whose warnings are
printed at exit (:func:`print_log_problems`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import TextIO

from ceilometer_cmt.cmd import poll as pollrun
from ceilometer_cmt.cmd.top.loop import watch
from ceilometer_cmt.cmd.top.render import render
from ceilometer_cmt.cmd.top.view import SORT_KEYS, view_json


def logging_conf(log_file: str) -> str:
    """A Python logging config (oslo.log ``log_config_append``) sending all to ``log_file``.

    It replaces oslo.log's handlers, stderr included, so nothing scribbles
    over a live view (pollrun turns ``use_stderr`` on for ``poll``).
    """
    return (
        "[loggers]\nkeys = root\n[handlers]\nkeys = file\n[formatters]\nkeys = plain\n"
        "[logger_root]\nlevel = INFO\nhandlers = file\n"
        f"[handler_file]\nclass = FileHandler\nargs = ({log_file!r},)\nformatter = plain\n"
        "[formatter_plain]\n"
        "format = %(asctime)s %(process)d %(levelname)s %(name)s [-] %(message)s\n"
    )


def write_log_config(directory: str, log_file: str) -> str:
    """Write :func:`logging_conf` and a ceilometer config file using it; returns the latter."""
    logging_path = os.path.join(directory, "logging.conf")
    with open(logging_path, "w", encoding="utf-8") as f:
        f.write(logging_conf(log_file))
    conf = os.path.join(directory, "log.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(f"[DEFAULT]\nlog_config_append = {logging_path}\n")
    return conf


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ceilometer-cmt top",
        description="Live per-instance L3 cache occupancy and memory bandwidth, from real "
                    "polling cycles with the agent's own configuration.")
    p.add_argument("--config-file", action="append", default=[],
                   help="ceilometer config file(s), as given to ceilometer-polling "
                        "(default: $CEILOMETER_CMT_CONFIG, else /etc/ceilometer/ceilometer.conf "
                        "when it exists)")
    pollrun.add_set_option(p, "backend=resctrl")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between polling cycles (default 2)")
    p.add_argument("--cycles", type=int, help="stop after N cycles (default, or 0: until Ctrl-C)")
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default="occupancy-percent",
                   help="row order (default occupancy-percent, largest first)")
    p.add_argument("--once", action="store_true",
                   help="poll twice, --interval apart (bandwidth is a rate between two "
                        "reads), print the second cycle and exit")
    p.add_argument("--json", action="store_true",
                   help="with --once: one JSON document; else one per cycle (JSON lines)")
    p.add_argument("--log-file",
                   help="agent log file (default: the config's; with the live view on a "
                        "terminal a temporary file whose warnings are printed at exit)")
    return p


def default_config_files() -> list[str]:
    files = pollrun.env_config_files()
    if not files and os.path.exists("/etc/ceilometer/ceilometer.conf"):
        files = ["/etc/ceilometer/ceilometer.conf"]
    return files


def print_log_problems(path: str, out: TextIO) -> None:
    """WARNING/ERROR lines of an agent log, minus known harmless noise."""
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if (" WARNING " in line or " ERROR " in line) and "memcache" not in line:
                out.write(line)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.interval < 0 or (args.cycles is not None and args.cycles < 0):
        print("ceilometer-cmt top: --interval must be >= 0 and --cycles >= 0", file=sys.stderr)
        return 2
    if args.cycles == 0:
        args.cycles = None
    config_files = args.config_file or default_config_files()
    overrides = pollrun.cmt_overrides(args.set)
    live = not args.json and sys.stdout.isatty()
    # the log setup (and, live, the log itself) is the only thing top writes
    tmp = tempfile.mkdtemp(prefix="cmt-top-") if live or args.log_file else ""
    log_file = args.log_file or (os.path.join(tmp, "agent.log") if live else None)
    try:
        extra = [write_log_config(tmp, log_file)] if log_file else []
        return _run(args, [*config_files, *extra], overrides, live)
    except KeyboardInterrupt:
        return 130
    finally:
        if log_file and not args.log_file:
            print_log_problems(log_file, sys.stderr)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, config_files: list[str],
         overrides: pollrun.Overrides, live: bool) -> int:
    with pollrun.polling_agent(config_files, overrides=overrides) as agent:
        if args.once:
            last = watch(agent, interval=args.interval, cycles=2, sort=args.sort,
                         mode="quiet")
            assert last is not None
            if args.json:
                print(json.dumps(view_json(last), indent=2, sort_keys=True))
            else:
                from rich.console import Console

                Console().print(render(last))
            return 0
        watch(agent, interval=args.interval, cycles=args.cycles, sort=args.sort,
              mode="views" if args.json else ("live" if live else "print"))
    return 0
