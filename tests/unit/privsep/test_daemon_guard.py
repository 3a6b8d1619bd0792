"""The agent's side of the daemon for MBM counter assignments: a path becomes
names (:class:`PrivsepOps`), and :class:`GuardedOps` starts the daemon first."""

from __future__ import annotations

import errno

import pytest

from ceilometer_cmt.errors import InstanceGone, NotMonitored
from ceilometer_cmt.privsep import daemon_guard as guard
from ceilometer_cmt.privsep import entrypoints

ROOT = "/sys/fs/resctrl"
UUID = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"


def test_privsep_ops_send_names_never_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[object, ...]] = []

    def fake(ctrl: str, uuid: str, lines: list[str]) -> list[list[object]]:
        sent.append((ctrl, uuid, lines))
        return [[lines[0], 28]]  # msgpack gives lists back

    monkeypatch.setattr(entrypoints, "write_group_assignments", fake)
    ops = entrypoints.PrivsepOps(ROOT, "ceilometer-")
    line = "mbm_total_bytes:*=e\n"
    assert ops.write_assignments(f"{ROOT}/mon_groups/ceilometer-{UUID}", [line]) == [(line, 28)]
    assert ops.write_assignments(f"{ROOT}/qemu-1/mon_groups/ceilometer-{UUID}", [line])
    assert sent == [("", UUID, [line]), ("qemu-1", UUID, [line])]
    with pytest.raises(ValueError):
        ops.write_assignments(f"{ROOT}/info/L3_MON", [line])


class _Ops:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def write_assignments(self, group_path: str, lines: list[str]) -> list[tuple[str, int]]:
        self.calls.append((group_path, lines))
        return []


def test_guarded_ops_start_the_daemon_first_and_fail_cleanly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "helper_argv", lambda: ["sudo", "helper"])
    ops = _Ops()

    def broken() -> None:
        raise OSError(2, "no such file")

    g = guard.GuardedOps(ops, start=broken)  # type: ignore[arg-type]
    with pytest.raises(NotMonitored, match="privsep daemon did not start"):
        g.write_assignments("/r/mon_groups/g", ["mbm_total_bytes:0=e\n"])
    assert ops.calls == []
    ok = guard.GuardedOps(ops, start=lambda: None)  # type: ignore[arg-type]
    assert ok.write_assignments("/r/mon_groups/g", ["mbm_total_bytes:0=e\n"]) == []
    assert ops.calls == [("/r/mon_groups/g", ["mbm_total_bytes:0=e\n"])]


class _CatOps:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def make_ctrl_group(self, ctrl: str) -> None:
        self.calls.append(("make", ctrl))

    def remove_ctrl_group(self, ctrl: str) -> None:
        self.calls.append(("remove", ctrl))

    def write_schemata(self, ctrl: str, lines: list[str]) -> None:
        self.calls.append(("schemata", ctrl, lines))

    def move_threads(self, ctrl: str, uuid: str, domain_name: str,
                     tids: list[int]) -> list[tuple[int, int]]:
        self.calls.append(("move", ctrl, uuid, domain_name, tids))
        return [(tids[0], 3)]


def test_guarded_cat_ops_fail_with_oserror_and_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard's protocol raises OSError: a daemon that cannot start is a
    PermissionError naming the helper, and nothing is called."""
    monkeypatch.setattr(guard, "helper_argv", lambda: ["sudo", "helper"])
    ops = _CatOps()

    def broken() -> None:
        raise OSError(2, "no such file")

    g = guard.GuardedCatOps(ops, guard.DaemonGuard(start=broken))
    for call in (lambda: g.make_ctrl_group("ceilometer-cap-25"),
                 lambda: g.remove_ctrl_group("ceilometer-cap-25"),
                 lambda: g.write_schemata("ceilometer-cap-25", ["L3:0=3\n"]),
                 lambda: g.move_threads("ceilometer-cap-25", UUID, "instance-1", [7])):
        with pytest.raises(PermissionError, match="privsep daemon did not start"):
            call()
    assert ops.calls == []
    ok = guard.GuardedCatOps(ops, guard.DaemonGuard(start=lambda: None))
    ok.make_ctrl_group("ceilometer-cap-25")
    assert ok.move_threads("ceilometer-cap-25", UUID, "instance-1", [7]) == [(7, 3)]
    assert ops.calls == [("make", "ceilometer-cap-25"),
                         ("move", "ceilometer-cap-25", UUID, "instance-1", [7])]


@pytest.mark.parametrize(("raised", "kind", "err", "text"), [
    (PermissionError("refused by the daemon, rule cap-groups: x"), PermissionError,
     errno.EPERM, "rule cap-groups"),
    (OSError(errno.ENOSPC, "refused ... closid_reserve"), OSError, errno.ENOSPC,
     "closid_reserve"),
    (InstanceGone("no pidfile for 'instance-1'"), ProcessLookupError, errno.ESRCH,
     "no pidfile"),
    (EOFError("channel closed"), OSError, errno.EIO, "privsep daemon: EOFError"),
])
def test_guarded_cat_ops_errors_are_oserrors_with_text(
        raised: Exception, kind: type, err: int, text: str) -> None:
    """The guard reports ``e.strerror``: never None, whatever the daemon raised."""
    class Failing(_CatOps):
        def make_ctrl_group(self, ctrl: str) -> None:
            raise raised

    g = guard.GuardedCatOps(Failing(), guard.DaemonGuard(start=lambda: None))
    with pytest.raises(kind) as e:
        g.make_ctrl_group("ceilometer-cap-25")
    assert e.value.errno == err and text in str(e.value.strerror)


def test_the_counters_kept_free_come_from_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent plans within the daemon's counter reserve: it asks the
    daemon, which answers (domain, counters) pairs (msgpack gives lists)."""
    monkeypatch.setattr(entrypoints, "mbm_counters_kept_free", lambda: [[0, 4], [1, 2]])
    ops = entrypoints.PrivsepOps(ROOT, "ceilometer-")
    assert ops.kept_free() == {0: 4, 1: 2}
    monkeypatch.setattr(guard, "helper_argv", lambda: ["sudo", "helper"])

    def broken() -> None:
        raise OSError(2, "no such file")

    with pytest.raises(NotMonitored, match="privsep daemon did not start"):
        guard.GuardedOps(ops, start=broken).kept_free()
    assert guard.GuardedOps(ops, start=lambda: None).kept_free() == {0: 4, 1: 2}
