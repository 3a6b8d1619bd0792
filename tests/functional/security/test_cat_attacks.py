"""A hostile agent against the daemon's CAT writes (the guard's cap
groups): run as the unprivileged user in the same attacker run as
test_attacks.py (tests/functional/security/stand.py).

It makes, removes and writes control groups that are not the guard's (the
default group, ``info``, ``..``, paths, libvirt's ``<cachetune>`` group
the test made as root), writes schemata lines the kernel or the daemon must
refuse, moves its own process, pid 1, another guest's thread, and a
``<cachetune>`` vCPU thread (back to the default group and into a cap
group), and makes cap groups until the CLOSID reserve stops it. Every
refusal names its rule; the ``<cachetune>`` group, its schemata and its
thread stay as they were (test_attacks.py's state check covers every group
not ours).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ceilometer_cmt.guard import cbm
from tests.functional.security.stand import CACHETUNE, REFUSED, Stand
from tests.support.daemon_stand import missing_reason

_reason = missing_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

REFUSED_EINVAL = "OSError: [Errno 22] refused by the ceilometer-cmt privsep daemon, rule "
NAMES = 20
LINES = ["non_contiguous", "outside_cbm_mask", "below_min_cbm_bits", "zero", "unknown_domain",
         "mb_line", "l3code_without_cdp", "two_lines_in_one", "huge", "many_lines", "nul",
         "other_file", "tasks_line", "duplicate_domain", "not_hex", "unicode_digit",
         "not_a_list", "not_text", "nothing"]
EXPECTED = {
    **{f"cat_{op}_{i}": "cap-groups" for op in ("mkdir", "rmdir") for i in range(NAMES)},
    "cat_schemata_foreign": "cap-groups", "cat_schemata_default": "cap-groups",
    "cat_schemata_info": "cap-groups", "cat_move_into_foreign": "cap-groups",
    **{f"cat_line_{label}": "schemata" for label in LINES},
    "cat_move_self": "threads", "cat_move_pid1": "threads", "cat_move_other_guest": "threads",
    "cat_move_cachetune_back": "cap-threads", "cat_move_cachetune_in": "cap-threads",
    "cat_move_pqos_thread": "cap-threads",
}
#: the reason each line is refused for, as the daemon says it
WHY = {"non_contiguous": "The mask f0f has non-consecutive 1-bits",
       "outside_cbm_mask": "Mask out of range", "below_min_cbm_bits": "Need at least 2 bits",
       "zero": "Mask out of range", "unknown_domain": "unknown L3 domain 5",
       "mb_line": "only L3 cache allocation", "l3code_without_cdp": "no L3CODE schemata",
       "two_lines_in_one": "one schemata line per write", "huge": "at most 8192",
       "many_lines": "1 to 4 lines", "nul": "NUL", "other_file": "one schemata line per write",
       "tasks_line": "no ':'", "duplicate_domain": "Duplicate domain 0"}


def test_the_guards_writes_work(attack: dict[str, Any], stand: Stand) -> None:
    r = attack["results"]
    assert (r["cat_ok_mkdir"], r["cat_ok_schemata"], r["cat_ok_move"]) == ("done", "done", []), r
    # mbm_assign_on_mkdir gave the new control group counters of the reserve:
    # the daemon gave them back (amd-abmc: 8 per domain, 2 kept)
    assert r["cat_counters_after_mkdir"] == "0=2;1=2\n", r
    tids = sorted(stand.qemus[0].tids)
    state = r["cat_ok_state"]
    assert cbm.parse_schemata(state["schemata"]) == {"L3": {0: 0xf, 1: 0xf}}
    assert state["tasks"] == tids and state["mon_tasks"] == tids
    assert (r["cat_ok_move_back"], r["cat_ok_rmdir"]) == ([], "done"), r
    assert set(tids) <= set(r["cat_ok_back_tasks"])
    assert not os.path.exists(os.path.join(stand.resctrl, "ceilometer-cap-25"))


def test_every_cat_attack_is_refused_naming_its_rule(attack: dict[str, Any]) -> None:
    r = attack["results"]
    wrong = {}
    for label, rule in EXPECTED.items():
        prefix = REFUSED_EINVAL if rule == "schemata" else REFUSED
        text = str(r.get(label))
        if not text.startswith(prefix + rule + ":"):
            wrong[label] = text
        elif label.removeprefix("cat_line_") in WHY and WHY[label[9:]] not in text:
            wrong[label] = f"reason: {text}"
    assert not wrong, json.dumps(wrong, indent=1)


def test_refused_lines_change_nothing(attack: dict[str, Any]) -> None:
    assert attack["results"]["cat_schemata_unchanged"] is True


def test_the_cachetune_group_keeps_its_thread_and_ways(attack: dict[str, Any],
                                                       stand: Stand) -> None:
    base = Path(stand.resctrl) / CACHETUNE
    assert base.is_dir()
    q2 = stand.qemus[1]
    assert (base / "tasks").read_text().split() == [str(q2.tids[1])]
    assert cbm.parse_schemata((base / "schemata").read_text()) == {"L3": {0: 0xc000,
                                                                          1: 0xc000}}


def test_the_closid_reserve_holds(attack: dict[str, Any], stand: Stand) -> None:
    """16 CLOSIDs, half kept: with the default group, qemu-9-vcpus, the
    <cachetune> group and the first cap group in use, 4 more cap groups are
    made, then ENOSPC naming the option; the reserve is free for root."""
    c = attack["results"]["cat_closids"]
    num = int((Path(stand.resctrl) / "info" / "L3" / "num_closids").read_text())
    reserve = num // 2
    assert c["made"] == num - 1 - 3 - reserve, c
    assert num - c["groups_at_refusal"] - 1 == reserve, c  # exactly the reserve free
    assert len(c["refusals"]) == 1, c
    assert c["refusals"][0].startswith(
        "OSError 28: refused by the ceilometer-cmt privsep daemon, rule closid-reserve:"), c
    assert "[cmt_privsep] closid_reserve" in c["refusals"][0], c
    made = [os.path.join(stand.resctrl, f"libvirt-{i}") for i in range(reserve)]
    try:
        for path in made:
            os.mkdir(path)
    finally:
        for path in made:
            if os.path.isdir(path):
                os.rmdir(path)
