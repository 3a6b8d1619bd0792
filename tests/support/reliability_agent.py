"""A minimal polling agent for the reliability suite (run as a real process).

    python reliability_agent.py CONFIG.json

CONFIG: {"root", "sysfs", "pid_dir", "refs": path of a JSON list of
[uuid, domain_name], "out": path of a JSON-lines file, "cycles": N,
"go": optional path to wait for before the first cycle, "sleep": seconds}.
Each cycle re-reads the refs file, polls once through CacheMonitor and the
plugin's ResctrlBackend (mount check on, real syscalls), and appends one line:
{"cycle", "pid", "mkdirs", "rmdirs", "writes", "instances": {uuid:
{"occupancy", "mbm_total"}}, "unmonitored", "error"}.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend
from ceilometer_cmt.monitor import CacheMonitor
from ceilometer_cmt.readings import InstanceRef


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("go"):
        while not os.path.exists(cfg["go"]):
            time.sleep(0.005)
    backend = ResctrlBackend(cfg["root"], sysfs_root=cfg["sysfs"], pid_dir=cfg["pid_dir"],
                             verify_mount=True)
    mon = CacheMonitor(backend)
    out = open(cfg["out"], "a", encoding="utf-8")  # noqa: SIM115
    for cycle in range(int(cfg.get("cycles", 1000000))):
        with open(cfg["refs"], encoding="utf-8") as f:
            refs = [InstanceRef(u, n) for u, n in json.load(f)]
        line: dict[str, object] = {"cycle": cycle, "pid": os.getpid()}
        try:
            res = mon.poll(refs)
            line["instances"] = {u: {"occupancy": m.occupancy, "mbm_total": m.mbm_total_bytes}
                                 for u, m in res.instances.items()}
            line["unmonitored"] = res.unmonitored
        except Exception:  # a crash of the cycle is what the test looks for
            line["error"] = traceback.format_exc()
        line.update(mkdirs=backend.mkdirs, rmdirs=backend.rmdirs, writes=backend.writes)
        out.write(json.dumps(line) + "\n")
        out.flush()
        time.sleep(float(cfg.get("sleep", 0.0)))
    mon.close()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
