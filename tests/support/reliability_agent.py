"""A minimal polling agent for the reliability suite (run as a real process).

    python reliability_agent.py CONFIG.json

CONFIG: {"root", "sysfs", "pid_dir", "refs": path of a JSON list of
[uuid, domain_name] (or [uuid, domain_name, mbm_priority]), "out": path of a
JSON-lines file, "cycles": N, "go": optional path to wait for before the
first cycle, "sleep": seconds, "step": optional path for lockstep runs}.
Each cycle re-reads the refs file, polls once through CacheMonitor and the
plugin's ResctrlBackend (mount check on, real syscalls), and appends one line:
{"cycle", "pid", "mkdirs", "rmdirs", "writes", "instances": {uuid:
{"occupancy", "mbm_total", "mbm_local", "mbm_total_rate", "mbm_local_rate"}},
"unmonitored", "removed_by_others", "mbm_available", "warnings", "error"}.

Lockstep (``step``): before cycle N the agent waits until the step file reads
``"<M> <T>"`` with M > N, and T (the simulator's manual clock) is the
monitor's clock for that cycle, so rates are per simulated second. The test
writes the file, waits for line N, checks, changes the host, and so on.
``warnings``: the WARNING (and worse) log messages of that cycle; they also go
to the process's stderr (the ``.log`` file) as ``LEVEL logger: message``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback

from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend
from ceilometer_cmt.monitor import CacheMonitor
from ceilometer_cmt.readings import InstanceRef


class CycleWarnings(logging.Handler):
    """Collects the WARNING+ messages logged during one cycle."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def wait_step(path: str, cycle: int) -> float | None:
    """Block until the step file allows ``cycle``; its clock value (or None)."""
    while True:
        try:
            with open(path, encoding="utf-8") as f:
                parts = f.read().split()
        except FileNotFoundError:
            parts = []
        if len(parts) >= 1 and int(parts[0]) > cycle:
            return float(parts[1]) if len(parts) > 1 else None
        time.sleep(0.002)


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings = CycleWarnings()
    logging.getLogger().addHandler(warnings)
    if cfg.get("go"):
        while not os.path.exists(cfg["go"]):
            time.sleep(0.005)
    backend = ResctrlBackend(cfg["root"], sysfs_root=cfg["sysfs"], pid_dir=cfg["pid_dir"],
                             verify_mount=True)
    step = cfg.get("step")
    now = [0.0]
    mon = (CacheMonitor(backend, clock=lambda: now[0]) if step
           else CacheMonitor(backend))
    out = open(cfg["out"], "a", encoding="utf-8")  # noqa: SIM115
    for cycle in range(int(cfg.get("cycles", 1000000))):
        if step:
            clock = wait_step(step, cycle)
            if clock is not None:
                now[0] = clock
        with open(cfg["refs"], encoding="utf-8") as f:
            refs = [InstanceRef(*ref) for ref in json.load(f)]
        line: dict[str, object] = {"cycle": cycle, "pid": os.getpid()}
        warnings.messages = []
        try:
            res = mon.poll(refs)
            line["instances"] = {u: {"occupancy": m.occupancy, "mbm_total": m.mbm_total_bytes,
                                     "mbm_local": m.mbm_local_bytes,
                                     "mbm_total_rate": m.mbm_total_rate,
                                     "mbm_local_rate": m.mbm_local_rate}
                                 for u, m in res.instances.items()}
            line["unmonitored"] = res.unmonitored
            line["removed_by_others"] = res.removed_by_others
            line["mbm_available"] = res.mbm_counters_available
        except Exception:  # a crash of the cycle is what the test looks for
            line["error"] = traceback.format_exc()
        line["warnings"] = warnings.messages
        line.update(mkdirs=backend.mkdirs, rmdirs=backend.rmdirs, writes=backend.writes)
        out.write(json.dumps(line) + "\n")
        out.flush()
        time.sleep(float(cfg.get("sleep", 0.0)))
    mon.close()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
