#!/usr/bin/env python3
"""The three benchmarks on two checkouts, side by side in one run.

Each benchmark script puts its own checkout first on ``sys.path``, so running
``<tree>/bench/bench_x.py`` measures that tree's code with this venv's
libraries. The two trees alternate (before, after, before, after, ...) so that
both see the same drift of a shared machine; each figure is the median of its
repeats, and the noise is the spread of the "before" repeats (max - min over
median), against which a change is judged.

    python bench/compare_trees.py --before /path/to/old/checkout \
        [--after .] [--repeats 3] [--only bench_x.py ...]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (script arguments, parser of its output into {figure: value})
Parser = Callable[[str], dict[str, float]]


def _resctrl(out: str) -> dict[str, float]:
    ratio = re.search(r"ratio plugin/raw: ([\d.]+)x", out)
    cycle = re.search(r"plugin cycle \(CacheMonitor.poll\), median of \d+: ([\d.]+) ms", out)
    if not ratio or not cycle:
        raise ValueError(out[-2000:])
    return {"resctrl plugin/raw ratio (500 instances)": float(ratio.group(1)),
            "resctrl plugin cycle, ms": float(cycle.group(1))}


def _perf(out: str) -> dict[str, float]:
    found = {f"perf backend/raw worst ratio, {n} threads": float(r) for n, r in
             re.findall(r"(\d+) threads/instance: worst ratio ([\d.]+)x", out)}
    if not found:
        raise ValueError(out[-2000:])
    return found


def _libvirt(out: str) -> dict[str, float]:
    row = re.compile(r"^\s*(\d+) \|\s*([\d.]+) ms \|\s*([\d.]+) ms \|\s*([\d.]+) ms \|"
                     r"\s*([\d.]+) ms", re.M)
    found: dict[str, float] = {}
    for n, _rpc, backend, per_domain, old in row.findall(out):
        found[f"libvirt backend sync, ms ({n} domains)"] = float(backend)
        found[f"libvirt speedup vs ceilometer <= 23 ({n} domains)"] = (
            float(old) / float(backend))
        found[f"libvirt speedup vs per-domain ({n} domains)"] = (
            float(per_domain) / float(backend))
    if not found:
        raise ValueError(out[-2000:])
    return found


BENCHES: dict[str, tuple[list[str], Parser]] = {
    "bench_resctrl.py": (["--instances", "500", "--runs", "5"], _resctrl),
    "bench_perf.py": (["--instances", "64", "--threads", "3", "5", "--blocks", "15"], _perf),
    "bench_libvirt.py": (["--sizes", "1000", "--rounds", "7"], _libvirt),
}


def run(tree: str, script: str, args: list[str]) -> str:
    # from a neutral directory, so that '' on sys.path is not either checkout
    proc = subprocess.run([sys.executable, os.path.join(tree, "bench", script), *args],
                          cwd="/", capture_output=True, text=True, timeout=1800, check=False)
    # A bench exits 1 when its goal is missed: the figures still count (a
    # loaded machine misses on both sides); anything else is a failure.
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{tree}/bench/{script} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    if proc.returncode:
        print(f"# {tree}/bench/{script}: goal missed in this repeat", file=sys.stderr)
    return proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=ROOT)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=sorted(BENCHES), nargs="+")
    args = ap.parse_args()
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    results: dict[str, dict[str, list[float]]] = {}
    for script, (script_args, parse) in BENCHES.items():
        if args.only and script not in args.only:
            continue
        for i in range(args.repeats):
            for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
                out = run(trees[side], script, script_args)
                for figure, value in parse(out).items():
                    results.setdefault(figure, {}).setdefault(side, []).append(value)
                print(f"# {script} {side} #{i + 1} done", file=sys.stderr, flush=True)
    print(f"before: {trees['before']}\nafter:  {trees['after']}\n"
          f"{args.repeats} alternating repeats each; medians; noise = spread of 'before'\n")
    print("| figure | before | after | after/before | noise |")
    print("|---|---:|---:|---:|---:|")
    for figure, sides in results.items():
        b, a = statistics.median(sides["before"]), statistics.median(sides["after"])
        noise = (max(sides["before"]) - min(sides["before"])) / b if b else 0.0
        print(f"| {figure} | {b:.2f} | {a:.2f} | {a / b:.2f} | {noise:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
