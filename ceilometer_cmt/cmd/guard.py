"""``ceilometer-cmt guard``: cap a noisy neighbour's L3 share with CAT, and
``ceilometer-cmt cleanup --guard``: undo every cap.

The service is :mod:`ceilometer_cmt.guard.service`; this module gives it its
options (``[cmt]`` for the roots and the group prefix, ``[cmt_guard]`` for
the policy), its instances (ceilometer's own discovery, as the agent
lists them: :mod:`guard_instances`; ``cmt:guard=off`` in the server
metadata or the flavor's extra specs exempts one), its writes (:func:`cat_ops`:
direct as root, else through the privileged daemon, as ``[cmt] privsep``
says) and its outputs: a log line per action, an oslo.messaging
notification ``cmt.guard.cap`` / ``cmt.guard.release`` through the
config's notification transport, and with ``--json`` one line per action,
``{"event": "guard", "action": "cap", "uuid": ..., "share": ...}``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.cmd import guard_instances
from ceilometer_cmt.errors import CmtError
from ceilometer_cmt.guard import policy
from ceilometer_cmt.guard.direct_ops import DirectCatOps
from ceilometer_cmt.guard.ops import CatOps
from ceilometer_cmt.guard.service import Guard, GuardOptions, GuardReport

LOG = logging.getLogger(__name__)


def load_conf(config_files: Sequence[str]) -> Any:
    from oslo_config import cfg

    from ceilometer_cmt import options

    conf = cfg.ConfigOpts()
    options.register_opts(conf)
    options.register_guard_opts(conf)
    guard_instances.register_opts(conf)  # ceilometer's, for its discovery
    conf(args=[], project="ceilometer", default_config_files=list(config_files))
    return conf


def guard_options(conf: Any) -> GuardOptions:
    g = conf.cmt_guard
    return GuardOptions(
        resctrl_root=conf.cmt.resctrl_root, proc_root=conf.cmt.proc_root,
        sysfs_root=conf.cmt.sysfs_root, pid_dir=conf.cmt.libvirt_pid_dir,
        lock_file=g.lock_file, dry_run=g.dry_run,
        policy=policy.Options(
            prefix=conf.cmt.resctrl_group_prefix, cap_above=g.cap_above,
            cap_after=g.cap_after, release_below=g.release_below,
            release_after=g.release_after, cap_share=g.cap_share,
            closid_reserve=None if g.closid_reserve < 0 else g.closid_reserve))


def cat_ops(conf: Any, opts: GuardOptions) -> CatOps:
    """The writes: in this process when ``[cmt] privsep`` is ``never`` or
    ``auto`` as root, else through the privileged daemon (its entrypoints
    for cap groups; the daemon applies its own prefix and reserve)."""
    mode = conf.cmt.privsep
    if mode == "never" or (mode == "auto" and os.geteuid() == 0):
        return DirectCatOps(opts.resctrl_root, opts.policy.prefix)
    from ceilometer_cmt.privsep import daemon_guard
    from ceilometer_cmt.privsep.cat_entrypoints import PrivsepCatOps

    daemon_guard.configure(conf)
    return daemon_guard.GuardedCatOps(PrivsepCatOps())


def domain_names(conf: Any) -> dict[str, str]:
    """uuid -> libvirt domain name of the running instances; empty when
    ceilometer's discovery fails (the privileged daemon needs the name to
    check a move)."""
    try:
        return {i.uuid: i.domain_name for i in guard_instances.lister(conf)()}
    except guard_instances.DiscoveryFailed as e:
        LOG.warning("%s", e)
        return {}


class Notifications:
    """``cmt.guard.cap`` / ``cmt.guard.release`` through the config's
    notification transport (``[oslo_messaging_notifications]``)."""

    def __init__(self, conf: Any) -> None:
        import oslo_messaging

        self.host = conf.host
        transport = oslo_messaging.get_notification_transport(conf)
        self.notifier = oslo_messaging.Notifier(
            transport, publisher_id=f"ceilometer-cmt-guard.{conf.host}")

    def emit(self, result: GuardReport) -> None:
        for a in result.actions:
            self.notifier.info({}, f"cmt.guard.{a.kind}", payload(a, self.host, result))


def payload(a: Any, host: str, result: GuardReport) -> dict[str, Any]:
    return {"instance_id": a.uuid, "project_id": a.project_id, "share": a.share,
            "reason": a.reason, "host": host, "domains": list(a.domains),
            "dry_run": not a.done}


def json_lines(result: GuardReport) -> list[str]:
    return [json.dumps({"event": "guard", "action": a.kind, "uuid": a.uuid, "share": a.share,
                        "reason": a.reason, "dry_run": not a.done}, sort_keys=True)
            for a in result.actions]


def run(args: argparse.Namespace) -> int:
    conf = load_conf(args.config_file)
    opts = guard_options(conf)
    fs.verify_mount(opts.resctrl_root, opts.proc_root)
    notes = Notifications(conf)
    guard = Guard(opts, cat_ops(conf, opts), guard_instances.lister(conf))
    guard.start()
    LOG.info("ceilometer-cmt guard started (%s), every %gs", "DRY RUN: nothing is written"
             if opts.dry_run else "caps are applied", conf.cmt_guard.interval)
    try:
        n = 0
        while True:
            started = time.monotonic()
            try:
                result = guard.cycle()
            except (OSError, CmtError) as e:
                LOG.warning("guard cycle failed: %s", e)
            else:
                if args.json:
                    for line in json_lines(result):
                        print(line, flush=True)
                notes.emit(result)
            n += 1
            if args.once or (args.cycles and n >= args.cycles):
                return 0
            time.sleep(max(0.0, conf.cmt_guard.interval - (time.monotonic() - started)))
    finally:
        guard.stop()


def cleanup(config_files: Sequence[str], dry_run: bool = False) -> int:
    """Every thread of our cap groups back to the default group (and into
    the agent's monitor group there), then the cap groups removed; nothing
    else is touched, and never a group without our prefix. The writes go
    where the guard's go (:func:`cat_ops`: through the privileged daemon
    unless root with ``[cmt] privsep`` ``auto`` or ``never``), each move with
    the guest's libvirt domain name, which the daemon checks."""
    conf = load_conf(config_files)
    opts = guard_options(conf)
    root, pol = opts.resctrl_root, opts.policy
    ops = cat_ops(conf, opts)
    names = {} if dry_run else domain_names(conf)
    status = 0
    with fs.RootLock(root):
        groups = fs.list_groups(root)
        for group in sorted(pol.ours(groups)):
            tids = sorted(fs.read_tasks(os.path.join(root, group)))
            print(f"{'would remove' if dry_run else 'remove'}  {os.path.join(root, group)}"
                  f" ({len(tids)} threads back to the default group)")
            if dry_run:
                continue
            # the agent-named monitor groups: their threads into the agent's
            # group of the default group; any other thread goes back with the rmdir
            by_mon = {name: fs.read_tasks(os.path.join(fs.mon_groups_path(root, group), name))
                      for name in groups.get(group, [])
                      if name.startswith(pol.prefix)
                      and fs.UUID_RE.fullmatch(name[len(pol.prefix):])}
            for name, members in by_mon.items():
                uuid = name[len(pol.prefix):]
                domain = names.get(uuid)
                if domain is None and not isinstance(ops, DirectCatOps):
                    # the daemon moves only threads of a named guest's qemu
                    print(f"  {uuid} is not a running libvirt domain: its threads go "
                          "back with the rmdir, without their monitor group", file=sys.stderr)
                    continue
                try:
                    failed = ops.move_threads("", uuid, domain or "", sorted(members))
                except OSError as e:
                    print(f"  cannot move {name}'s threads back: {e.strerror}", file=sys.stderr)
                    failed = []
                    status = 1
                if any(err != errno.ESRCH for _, err in failed):
                    status = 1
            try:
                ops.remove_ctrl_group(group)  # the rest go back with the rmdir
            except FileNotFoundError:
                pass
            except OSError as e:
                print(f"  cannot remove {group}: {e.strerror}", file=sys.stderr)
                status = 1
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ceilometer-cmt guard", description=__doc__.split("\n")[0])
    p.add_argument("--config-file", action="append", default=[],
                   help="ceilometer config file(s) with [cmt] and [cmt_guard]")
    p.add_argument("--once", action="store_true", help="one cycle, then exit")
    p.add_argument("--cycles", type=int, default=0, help="stop after N cycles (0: never)")
    p.add_argument("--json", action="store_true",
                   help='one {"event": "guard", ...} line per cap or release')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except CmtError as e:
        print(f"ceilometer-cmt guard: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
