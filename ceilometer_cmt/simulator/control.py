"""Run-time control of a running simulator over a UNIX socket.

One JSON object per line in, one per line out (``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "..."}``).  Commands (``cmd``):

``state``
    groups, RMIDs free / in limbo, time, last_cmd_status.
``fault``
    ``{"cmd": "fault", "fault": {...}}``: one ``faults:`` entry of the scenario
    schema; without ``at`` it starts now, ``duration`` (s) ends it after that
    long.  An ``action`` entry (reset_counters, set_rmids, set_limbo, and the
    file writes assign_mode, event_filter, bmec_config) runs now, or at
    ``at`` when that is later.
``clear_faults``
    drop every value fault.
``reset_counters``
    ``{"group": "<fnmatch pattern>"}`` (default ``*``): MBM counters to 0.
``set_rmids`` / ``set_limbo``
    ``{"value": N}``: num_rmids / limbo seconds from now on.
``advance``
    ``{"seconds": S}``: move a ``clock: manual`` simulator's time.
``l3_online``
    ``{"l3": ID, "online": false|true}``: every CPU of L3 domain ID goes
    offline (its ``mon_L3_XX`` leaves every group) or comes back.
``reads``
    ``{"match": "<fnmatch pattern>", "reset": false|true}``: the reads of each
    value file (``mon_data/.../<event>``, path under the mount) whose path
    matches (default ``*``) since the start or the last reset; ``reset``
    clears every count after the answer. On real resctrl each such read of
    an L3 event is one ``mon_event_read()`` (``fs/resctrl/ctrlmondata.c``):
    a call on a CPU of that domain.
"""

from __future__ import annotations

import fnmatch
import json
import os
import socket
import threading
from dataclasses import replace
from typing import Any

from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.scenario import Action, Fault, ScenarioError, parse_fault
from ceilometer_cmt.simulator.timeline import ManualClock


def handle(model: Model, request: dict[str, Any]) -> Any:
    """Run one command; raises ValueError for a bad one."""
    cmd = request.get("cmd")
    if cmd == "state":
        return model.state()
    if cmd == "fault":
        raw = dict(request.get("fault") or {})
        duration = raw.pop("duration", None)
        explicit_start = "at" in raw
        item = parse_fault(raw, model.topology)
        now = model.now()
        if isinstance(item, Action):
            if explicit_start and item.at > now:
                model.schedule(item)
            else:
                model.advance()
                model.apply_action(item)
            return None
        assert isinstance(item, Fault)
        if not explicit_start:
            item = replace(item, start=now)
        if duration is not None:
            item = replace(item, end=item.start + float(duration))
        model.add_fault(item)
        return None
    if cmd == "clear_faults":
        model.clear_faults()
        return None
    if cmd == "reset_counters":
        return model.reset_counters(str(request.get("group", "*")))
    if cmd == "set_rmids":
        model.set_rmids(int(request["value"]))
        return None
    if cmd == "set_limbo":
        model.set_limbo(float(request["value"]))
        return None
    if cmd == "l3_online":
        model.set_l3_online(int(request["l3"]), bool(request["online"]))
        return None
    if cmd == "reads":
        return value_reads(model, str(request.get("match", "*")),
                           bool(request.get("reset", False)))
    if cmd == "advance":
        if not isinstance(model.clock, ManualClock):
            raise ValueError("advance needs a simulator started with clock: manual")
        model.clock.advance(float(request["seconds"]))
        model.advance()
        return model.now()
    raise ValueError(f"unknown command {cmd!r}")


def value_reads(model: Model, match: str = "*", reset: bool = False) -> dict[str, int]:
    """Reads per value file whose path matches ``match``; ``reset`` clears all."""
    with model.locked():
        out = {p: n for p, n in sorted(model.value_reads.items()) if fnmatch.fnmatch(p, match)}
        if reset:
            model.value_reads.clear()
    return out


class ControlServer:
    """Serves :func:`handle` on ``path`` in a daemon thread."""

    def __init__(self, model: Model, path: str) -> None:
        self.model = model
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        os.chmod(path, 0o600)
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, name="sim-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    reply = {"ok": True, "result": handle(self.model, request)}
                except (ValueError, KeyError, TypeError, ScenarioError) as e:
                    reply = {"ok": False, "error": str(e)}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()


class ControlClient:
    """Talks to a :class:`ControlServer`."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        self._stream = self._sock.makefile("rwb")

    def call(self, cmd: str, **args: Any) -> Any:
        self._stream.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        self._stream.flush()
        line = self._stream.readline()
        if not line:
            raise ConnectionError("simulator closed the control socket")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ValueError(reply.get("error", "control command failed"))
        return reply.get("result")

    def close(self) -> None:
        self._stream.close()
        self._sock.close()
