"""CAT through the FUSE simulator, with real syscalls: a control group with a
quarter of the ways bounds a noisy workload's llc_occupancy and lets its
neighbour rise; bad masks fail with EINVAL and the kernel's last_cmd_status
text (doc/kernel-facts-cat.md); the guard's cap schemata are accepted on
every simulated host.

Needs /dev/fuse, fusermount3 and libfuse3 (Debian fuse3, libfuse3-3) and root.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest

from ceilometer_cmt.guard.cbm import CacheInfo, cap_schemata, format_schemata, parse_schemata
from ceilometer_cmt.simulator import Simulator
from tests.support.fuse import needs_fuse_root

pytestmark = needs_fuse_root

MiB = 2**20
GRAN = 49152  # intel-2s occupancy granularity


def cat(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, data: bytes) -> int:
    """One write(); its errno (0: success)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.write(fd, data) == len(data)
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        os.close(fd)


def occupancy(root: str, group: str, domain: int = 0) -> int:
    return int(cat(f"{root}/{group}/mon_data/mon_L3_{domain:02d}/llc_occupancy"))


def mib(n: float) -> int:
    return int(n * MiB) // GRAN * GRAN


def test_a_quarter_of_the_ways_bounds_the_noisy_and_frees_room_for_its_neighbour(
        sim: Callable[..., Simulator], procs: Any) -> None:
    noisy, neighbour = procs(), procs()
    s = sim("intel-2s", {"clock": "manual", "limbo_seconds": 0, "processes": [
        {"name": "noisy", "match": {"pid": noisy.pid},
         "timeline": [{"t": 0, "occupancy": {0: "80%"}}]},
        {"name": "neighbour", "match": {"pid": neighbour.pid},
         "timeline": [{"t": 0, "occupancy": {0: "40%"}}]},
    ]})
    root = s.mountpoint
    for name, p in (("noisy", noisy), ("nb", neighbour)):
        os.mkdir(f"{root}/mon_groups/{name}")
        assert write(f"{root}/mon_groups/{name}/tasks", b"%d" % p.pid) == 0
    # 24 + 12 MiB wanted of a 30 MiB L3: both squeezed in proportion
    assert occupancy(root, "mon_groups/noisy") == mib(20)
    assert occupancy(root, "mon_groups/nb") == mib(10)

    os.mkdir(f"{root}/cap")
    assert cat(f"{root}/cap/schemata") == "L3:0=fffff;1=fffff\n"  # a new group: every way
    assert write(f"{root}/cap/schemata", b"L3:0=1f;1=1f\n") == 0
    assert cat(f"{root}/info/last_cmd_status") == "ok\n"
    assert cat(f"{root}/cap/size") == f"L3:0={30 * MiB // 4};1={30 * MiB // 4}\n"
    os.mkdir(f"{root}/cap/mon_groups/noisy")
    # the monitor group follows: control group first, as the kernel wants
    assert write(f"{root}/cap/mon_groups/noisy/tasks", b"%d" % noisy.pid) == errno.EINVAL
    assert cat(f"{root}/info/last_cmd_status") == (
        f"Can't move task to different control group\nError while processing task "
        f"{noisy.pid}\n")
    assert write(f"{root}/cap/tasks", b"%d" % noisy.pid) == 0
    assert write(f"{root}/cap/mon_groups/noisy/tasks", b"%d" % noisy.pid) == 0

    assert occupancy(root, "cap/mon_groups/noisy") == mib(7.5)  # a quarter of 30 MiB
    assert occupancy(root, "cap") == mib(7.5)  # the control group sums its RMIDs
    assert occupancy(root, "mon_groups/noisy") == 0
    assert occupancy(root, "mon_groups/nb") == mib(12)  # its whole demand now
    assert occupancy(root, "cap/mon_groups/noisy", 1) == 0  # no load on L3 1

    # release: rmdir gives the task back to the default group, the bound goes
    os.rmdir(f"{root}/cap")
    assert str(noisy.pid) in cat(f"{root}/tasks").split()
    assert occupancy(root, "mon_groups/nb") == mib(10)  # squeezed again by the noisy


def test_bad_masks_get_einval_and_the_kernel_text(sim: Callable[..., Simulator]) -> None:
    root = sim("intel-2s").mountpoint
    os.mkdir(f"{root}/g")
    schemata, status = f"{root}/g/schemata", f"{root}/info/last_cmd_status"
    cases = {
        b"L3:0=f0f\n": "The mask f0f has non-consecutive 1-bits\n",
        b"L3:0=0\n": "Mask out of range\n",
        b"L3:0=1fffff\n": "Mask out of range\n",
        b"L3:0=zz\n": "Non-hex character in the mask zz\n",
        b"L3: 0=f\n": "Missing '=' or non-numeric domain\n",
        b"L3:0=f;0=f\n": "Duplicate domain 0\n",
        b"L3CODE:0=f\n": "Unknown or unsupported resource name 'L3CODE'\n",
        b"L3:0=3;1=f0f\n": "The mask f0f has non-consecutive 1-bits\n",
    }
    for data, text in cases.items():
        assert write(schemata, data) == errno.EINVAL, data
        assert cat(status) == text, data
    # all or nothing: domain 0 of the last write was not changed either
    assert cat(schemata) == "L3:0=fffff;1=fffff\n"
    # no trailing newline: EINVAL before the status is cleared (it keeps the old text)
    assert write(schemata, b"L3:0=3") == errno.EINVAL
    assert cat(status) == "The mask f0f has non-consecutive 1-bits\n"
    # a domain that does not exist: EINVAL, and the status says nothing ("ok")
    assert write(schemata, b"L3:7=f\n") == errno.EINVAL
    assert cat(status) == "ok\n"
    # a partial write changes only the domains it names
    assert write(schemata, b"L3:1=0003f\n") == 0
    assert cat(schemata) == "L3:0=fffff;1=0003f\n"


def test_out_of_closids_is_enospc_with_its_text(sim: Callable[..., Simulator]) -> None:
    root = sim("intel-2s", {"closids": 2}).mountpoint  # the default group holds CLOSID 0
    os.mkdir(f"{root}/one")
    with pytest.raises(OSError) as e:
        os.mkdir(f"{root}/two")
    assert e.value.errno == errno.ENOSPC
    assert cat(f"{root}/info/last_cmd_status") == "Out of CLOSIDs\n"
    assert not os.path.exists(f"{root}/two")


ODD = {"cbm_len": 11, "min_cbm_bits": 2}  # cbm_mask 7ff, Haswell's two-bit minimum


def test_an_odd_mask_and_a_two_bit_minimum(sim: Callable[..., Simulator]) -> None:
    root = sim("intel-2s", ODD).mountpoint
    assert cat(f"{root}/info/L3/cbm_mask") == "7ff\n"
    assert cat(f"{root}/info/L3/min_cbm_bits") == "2\n"
    os.mkdir(f"{root}/g")
    assert cat(f"{root}/g/schemata") == "L3:0=7ff;1=7ff\n"
    assert write(f"{root}/g/schemata", b"L3:0=1\n") == errno.EINVAL
    assert cat(f"{root}/info/last_cmd_status") == "Need at least 2 bits in the mask\n"
    assert write(f"{root}/g/schemata", b"L3:0=fff\n") == errno.EINVAL
    assert cat(f"{root}/info/last_cmd_status") == "Mask out of range\n"
    assert write(f"{root}/g/schemata", b"L3:0=3\n") == 0


@pytest.mark.parametrize("topology,scenario", [
    ("intel-2s", None), ("amd-ccx", None), ("snc", None), ("intel-aet", None),
    ("intel-2s", ODD)])
def test_the_guards_cap_schemata_are_accepted(sim: Callable[..., Simulator],
                                              topology: str, scenario: Any) -> None:
    """Two implementations written apart: the guard's masks and lines, the
    simulator's kernel checks; odd cbm_masks (15, 12, 11 ways), a two-bit
    minimum and sparse hosts."""
    root = sim(topology, scenario).mountpoint
    info = CacheInfo(
        int(cat(f"{root}/info/L3/cbm_mask"), 16),
        int(cat(f"{root}/info/L3/min_cbm_bits")),
        cat(f"{root}/info/L3/sparse_masks") == "1\n",
        int(cat(f"{root}/info/L3/shareable_bits"), 16),
    )
    default = parse_schemata(cat(f"{root}/schemata"))
    for share in (1, 25, 50, 100):
        group = f"{root}/cap-{share}"
        os.mkdir(group)
        wanted = cap_schemata(info, share, default)
        assert write(f"{group}/schemata", format_schemata(wanted).encode()) == 0
        assert cat(f"{root}/info/last_cmd_status") == "ok\n"
        assert parse_schemata(cat(f"{group}/schemata")) == wanted
        os.rmdir(group)
