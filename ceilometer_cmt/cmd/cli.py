"""``ceilometer-cmt``: probe the host, run polling cycles, clean up groups.

Subcommands of other modules (simulate, demo, top, gnocchi-resources) are
imported only when called.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any, cast

from ceilometer_cmt.backends import registry
from ceilometer_cmt.backends.resctrl import assign_files, fs, telemetry
from ceilometer_cmt.cmd import poll as pollrun
from ceilometer_cmt.errors import CmtError
from ceilometer_cmt.linux.sysfs_cache import read_host_cache


def load_settings(config_files: Sequence[str],
                  overrides: Sequence[tuple[str, str]] = ()) -> registry.Settings:
    """[cmt] (and ceilometer's [DEFAULT] libvirt_*) options from config files,
    then the ``--set`` pairs (checked already by :func:`pollrun.set_item`)."""
    from oslo_config import cfg

    from ceilometer_cmt import options
    from ceilometer_cmt.pollsters.runtime import settings_from_conf

    conf = cfg.ConfigOpts()
    options.register_opts(conf)
    conf.register_opts([cfg.StrOpt("libvirt_uri", default=""),
                        cfg.StrOpt("libvirt_type", default="kvm"),
                        cfg.StrOpt("host", default=platform.node())])
    conf(args=[], project="ceilometer", default_config_files=list(config_files))
    for (group, name), value in pollrun.cmt_overrides(overrides).items():
        conf.set_override(name, value, group=group)
    return settings_from_conf(conf)


def _cpu_vendor(proc_root: str) -> str | None:
    """x86's ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``); on arm64,
    whose ``/proc/cpuinfo`` has no such line (arch/arm64/kernel/cpuinfo.c
    ``c_show()``), the MIDR implementer code it prints as ``CPU implementer``."""
    implementer = None
    try:
        with open(os.path.join(proc_root, "cpuinfo"), encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
                if key.strip() == "CPU implementer" and implementer is None:
                    implementer = value.strip()
    except OSError:
        pass
    return f"arm64, CPU implementer {implementer}" if implementer else None


def probe_report(settings: registry.Settings) -> dict[str, Any]:
    host = read_host_cache(settings.sysfs_root)
    report: dict[str, Any] = {
        "kernel": platform.release(),
        "cpu_vendor": _cpu_vendor(settings.proc_root),
        "l3_domains": [{"id": d.id, "size": d.size, "cpus": d.cpus} for d in host.domains],
        "l3_total_bytes": host.size,
    }
    rc: dict[str, Any] = {"root": settings.resctrl_root}
    try:
        rc["mount"] = fs.verify_mount(settings.resctrl_root, settings.proc_root)
    except CmtError as e:
        rc["mount"] = None
        rc["mount_error"] = str(e)
    if os.path.isdir(os.path.join(settings.resctrl_root, "info")):
        info = fs.read_info(settings.resctrl_root)
        rc.update(mon_features=list(info.mon_features), num_rmids=info.num_rmids,
                  num_closids=info.num_closids)
        rc.update(_mbm_assignment(settings.resctrl_root))
        rc.update(_perf_pkg(settings.resctrl_root, info.num_rmids))
    report["resctrl"] = rc
    pmu = os.path.join(settings.sysfs_root, "bus", "event_source", "devices", "intel_cqm")
    report["perf_intel_cqm_pmu"] = os.path.isdir(pmu)
    report["libvirt"] = _libvirt_reachable(settings.libvirt_uri)
    backend, decisions = registry.choose(settings)
    report["backend"] = backend.name if backend else None
    report["decisions"] = [{"backend": d.backend, "usable": d.usable, "reason": d.reason}
                           for d in decisions]
    if backend:
        backend.close()
    return report


def _mbm_assignment(root: str) -> dict[str, Any]:
    """MBM counter assignment (Linux 6.18, AMD ABMC): ``mbm_assign_mode``
    (current and listed modes), the counters per domain (``num_mbm_cntrs``;
    ``available_mbm_cntrs``, null outside ``mbm_event`` mode), whether mkdir
    assigns (``mbm_assign_on_mkdir``) and the event filters. Each key only
    where the kernel gives the file (Documentation/filesystems/resctrl.rst,
    "L3_MON")."""
    out: dict[str, Any] = {}
    c = assign_files.read_counter_info(root)
    if c.mode is not None:
        out["mbm_assign_mode"] = {"current": c.mode.current, "modes": list(c.mode.modes)}
    if c.num_cntrs is not None:
        available = c.available or {}
        out["mbm_counters"] = [{"domain": d, "num": n, "available": available.get(d)}
                               for d, n in sorted(c.num_cntrs.items())]
    if c.on_mkdir is not None:
        out["mbm_assign_on_mkdir"] = c.on_mkdir
    filters = {ev: list(f) for ev in fs.MBM_EVENTS
               if (f := assign_files.read_event_filter(root, ev)) is not None}
    if filters:
        out["mbm_event_filters"] = filters
    return out


def _perf_pkg(root: str, l3_rmids: int | None) -> dict[str, Any]:
    """Intel AET telemetry (Linux 7.0, ``info/PERF_PKG_MON``): its events,
    ``num_rmids``, the packages and the group limit (the smaller
    ``num_rmids``); nothing on hosts without it."""
    info = telemetry.read_info(root)
    if info is None:
        return {}
    return {"perf_pkg": {"mon_features": list(info.mon_features), "num_rmids": info.num_rmids,
                         "packages": [pkg for pkg, _ in info.packages],
                         "group_limit": telemetry.group_limit(l3_rmids, info)}}


def _libvirt_reachable(uri: str) -> dict[str, Any]:
    try:
        import libvirt
    except ImportError:
        return {"uri": uri, "reachable": False, "error": "libvirt-python is not installed"}
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors come as exceptions
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as e:
        return {"uri": uri, "reachable": False, "error": str(e)}
    try:
        return {"uri": uri, "reachable": True, "domains": conn.numOfDomains()}
    finally:
        conn.close()


def _print_probe(report: dict[str, Any]) -> None:
    rows = [("kernel", report["kernel"]), ("cpu vendor", report["cpu_vendor"] or "unknown"),
            ("L3 total", _human(report["l3_total_bytes"]))]
    for d in report["l3_domains"]:
        rows.append((f"  L3 domain {d['id']}", f"{_human(d['size'])} cpus {d['cpus']}"))
    rc = report["resctrl"]
    rows.append(("resctrl", rc.get("mount") or rc.get("mount_error", "not mounted")))
    if "mon_features" in rc:
        rows.append(("  mon_features", " ".join(rc["mon_features"]) or "none"))
        rows.append(("  num_rmids", str(rc["num_rmids"])))
    rows.extend(_assignment_rows(rc))
    rows.append(("perf intel_cqm PMU", "present" if report["perf_intel_cqm_pmu"] else "absent"))
    lv = report["libvirt"]
    rows.append(("libvirt", f"{lv['uri']}: " + ("reachable" if lv["reachable"]
                                                 else lv.get("error", "unreachable"))))
    for d in report["decisions"]:
        rows.append((f"backend {d['backend']}", ("USE: " if d["usable"] else "no: ")
                     + d["reason"]))
    rows.append(("chosen backend", report["backend"] or "none (per-instance meters off)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _assignment_rows(rc: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    if "mbm_assign_mode" in rc:
        mode = rc["mbm_assign_mode"]
        rows.append(("  mbm_assign_mode", f"{mode['current']} (modes: "
                                          f"{', '.join(mode['modes'])})"))
    for c in rc.get("mbm_counters", []):
        free = "?" if c["available"] is None else c["available"]
        rows.append((f"  MBM counters L3 {c['domain']}", f"{free} free of {c['num']}"))
    if "mbm_assign_on_mkdir" in rc:
        rows.append(("  mbm_assign_on_mkdir", "yes" if rc["mbm_assign_on_mkdir"] else "no"))
    for ev, names in rc.get("mbm_event_filters", {}).items():
        rows.append((f"  {ev} filter", ",".join(names) or "none"))
    if "perf_pkg" in rc:
        pp = rc["perf_pkg"]
        rows.append(("  PERF_PKG (AET) events", " ".join(pp["mon_features"]) or "none"))
        rows.append(("  PERF_PKG num_rmids", str(pp["num_rmids"])))
        rows.append(("  monitor group limit", str(pp["group_limit"])))
    return rows


def _human(n: int | None) -> str:
    from ceilometer_cmt.cmd.top import human_bytes

    return "unknown" if n is None else human_bytes(n)


def cmd_probe(args: argparse.Namespace) -> int:
    report = probe_report(load_settings(args.config_file, args.set))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_probe(report)
    return 0 if report["backend"] else 1


def cmd_poll(args: argparse.Namespace) -> int:
    overrides = pollrun.cmt_overrides(args.set)
    cycles = pollrun.poll(args.config_file, args.cycles, args.polling_file, overrides)
    if not any(cycles):
        print("ceilometer-cmt poll: no sample at all: the plugin's pollsters did not load "
              "or the polling file names none of its meters; see the log above and "
              "'ceilometer-cmt probe'", file=sys.stderr)
        return 1
    for n, samples in enumerate(cycles, 1):
        rows = [pollrun.sample_row(s) for s in samples]
        if args.json:
            for row in rows:
                print(json.dumps({"cycle": n, **row}, sort_keys=True))
        else:
            print(f"# cycle {n}: {len(rows)} samples")
            for r in sorted(rows, key=lambda r: (r["resource_id"], r["name"])):
                print(f"{r['name']:<30} {r['type']:<10} {r['unit']:<8} "
                      f"{r['volume']:>20} {r['resource_id']}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    if args.guard:
        from ceilometer_cmt.cmd import guard

        return guard.cleanup(args.config_file, args.dry_run)
    from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend

    s = load_settings(args.config_file, args.set)
    # the very backend the agent would build from these settings
    backend = cast(ResctrlBackend, registry.entry("resctrl").open(s, None, None))
    owned = backend.owned_groups()
    keep: set[str] = set()
    if args.stale_only:
        try:
            keep = running_instance_uuids(s.libvirt_uri)
        except Exception as e:
            print(f"cannot list running instances from {s.libvirt_uri}: {e}; "
                  "nothing removed", file=sys.stderr)
            return 2
    doomed = [p for key, paths in sorted(owned.items()) if key not in keep for p in paths]
    kept = [p for key, paths in sorted(owned.items()) if key in keep for p in paths]
    for p in kept:
        print(f"keep    {p}")
    for p in doomed:
        print(f"{'would remove' if args.dry_run else 'remove'}  {p}")
    if not args.dry_run and doomed:
        removed = backend.remove_groups(doomed)
        if len(removed) != len(doomed):
            return 1
    return 0


def running_instance_uuids(uri: str) -> set[str]:
    import libvirt

    conn = libvirt.openReadOnly(uri)
    try:
        return {d.UUIDString() for d in conn.listAllDomains(
            libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    finally:
        conn.close()


#: subcommand -> "module:function" taking argv and returning an exit code
EXTERNAL = {
    "simulate": ("ceilometer_cmt.simulator.runner:simulate_main", "run the resctrl simulator"),
    "demo": ("ceilometer_cmt.cmd.demo:main", "simulated host + real polling + live view"),
    "top": ("ceilometer_cmt.cmd.top:main", "live per-instance cache view"),
    "guard": ("ceilometer_cmt.cmd.guard:main", "cap a noisy neighbour's L3 share with CAT"),
    "gnocchi-resources": ("ceilometer_cmt.cmd.gnocchi_resources:main",
                          "print ceilometer's gnocchi_resources.yaml with our meters merged"),
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-file", action="append", default=[],
                   help="ceilometer config file(s) holding [cmt] options")
    pollrun.add_set_option(p, "resctrl_root=/mnt/r")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ceilometer-cmt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="what this host offers and which backend runs")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe)
    p = sub.add_parser("poll", help="run N real polling cycles and print the samples")
    _common(p)
    p.add_argument("--cycles", type=int, default=1)
    p.add_argument("--polling-file", help="polling.yaml (default: all our meters)")
    p.add_argument("--json", action="store_true", help="one JSON object per sample")
    p.set_defaults(func=cmd_poll)
    p = sub.add_parser("cleanup", help="remove resctrl groups with our prefix")
    _common(p)
    p.add_argument("--stale-only", action="store_true",
                   help="keep the groups of instances running on this host")
    p.add_argument("--dry-run", action="store_true", help="only list")
    p.add_argument("--guard", action="store_true",
                   help="undo the guard: threads of its cap groups back, cap groups removed")
    p.set_defaults(func=cmd_cleanup)
    for name, (_target, help_text) in EXTERNAL.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=None, external=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTERNAL:
        module, _, func = EXTERNAL[argv[0]][0].partition(":")
        try:
            target = getattr(importlib.import_module(module), func)
        except ImportError as e:
            print(f"ceilometer-cmt {argv[0]}: not available: {e}", file=sys.stderr)
            return 2
        return int(target(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CmtError as e:
        print(f"ceilometer-cmt: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
