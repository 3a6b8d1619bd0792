"""Host L3 topology from sysfs: the parsers, fixture trees, and this machine's real /sys."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ceilometer_cmt.linux.sysfs_cache import (
    HostCacheReader,
    online_cpus,
    parse_cpu_list,
    parse_size,
    read_cache_domains,
    read_host_cache,
)
from ceilometer_cmt.readings import CacheDomain
from ceilometer_cmt.simulator.topology import (
    L3Cache,
    MonDomain,
    Topology,
    format_cpu_list,
    get_topology,
)
from ceilometer_cmt.testing.kernel_trees import build_sysfs

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
INTEL_2S = get_topology("intel-2s")
#: its CPUs as ``devices/system/cpu/online`` lists them
ONLINE = format_cpu_list(INTEL_2S.cpus) + "\n"


# ------------------------------------------------------------------ parse_size
@pytest.mark.parametrize("text,expected", [
    ("266240K", 266240 * 1024),
    ("307200K\n", 307200 * 1024),
    ("48K", 48 * 1024),
    ("2M", 2 * 1024**2),
    ("1G", 1024**3),
    ("512", 512),
    ("0K", 0),
    ("  36608K  ", 36608 * 1024),
])
def test_parse_size_kernel_values(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "", "K", "-1K", "1.5M", "12KB", "12k", "12 T", "0x10K", "1K2", "Unavailable", "1e3",
    "12K\n13K",
])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(sorted(UNITS)),
       st.sampled_from(["", "\n", " ", " \n"]))
def test_parse_size_roundtrip(n: int, unit: str, tail: str) -> None:
    assert parse_size(f"{n}{unit}{tail}") == n * UNITS[unit]


@given(st.text(max_size=20))
def test_parse_size_any_text_is_a_size_or_value_error(text: str) -> None:
    try:
        value = parse_size(text)
    except ValueError:
        return
    assert isinstance(value, int) and value >= 0


@given(st.text(alphabet="0123456789KMG \n", max_size=12))
def test_parse_size_accepts_exactly_the_kernel_grammar(text: str) -> None:
    ok = re.fullmatch(r"\s*[0-9]+\s*[KMG]?\s*", text) is not None
    if ok:
        m = re.fullmatch(r"\s*([0-9]+)\s*([KMG]?)\s*", text)
        assert m is not None
        assert parse_size(text) == int(m.group(1)) * UNITS[m.group(2)]
    else:
        with pytest.raises(ValueError):
            parse_size(text)


@pytest.mark.parametrize("text", ["\u0663K", "\uff11\uff12K", "1\u0660"])
def test_parse_size_rejects_non_ascii_digits(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# -------------------------------------------------------------- parse_cpu_list
@pytest.mark.parametrize("text,expected", [
    ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
    ("0-1\n", [0, 1]),
    ("5", [5]),
    ("", []),
    ("\n", []),
    ("0-9,20-29", list(range(10)) + list(range(20, 30))),
    ("3,1,2", [1, 2, 3]),  # not kernel order, still a set of cpus
    ("1,1-2", [1, 2]),
    ("4-4", [4]),
])
def test_parse_cpu_list_kernel_values(text: str, expected: list[int]) -> None:
    assert parse_cpu_list(text) == expected


@pytest.mark.parametrize("text", [
    "3-1", "a", "1-", "-1", "1,,2", ",", "1,", "1-2-3", "1 2", "0x1", "1.5", "1-b",
])
def test_parse_cpu_list_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


@given(st.sets(st.integers(min_value=0, max_value=4096), max_size=80))
@example(set())
@example({0})
@example({0, 1, 2, 3, 8, 10, 11})
def test_parse_cpu_list_roundtrip(cpus: set[int]) -> None:
    text = format_cpu_list(cpus)
    assert parse_cpu_list(text) == sorted(cpus)
    assert parse_cpu_list(text + "\n") == sorted(cpus)
    assert format_cpu_list(parse_cpu_list(text)) == text


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), min_size=1, max_size=10))
def test_parse_cpu_list_any_ranges(ranges: list[tuple[int, int]]) -> None:
    """Unsorted, overlapping ranges and singles: the union, sorted."""
    parts = [f"{lo}-{lo + n}" if n else str(lo) for lo, n in ranges]
    expected = sorted({c for lo, n in ranges for c in range(lo, lo + n + 1)})
    assert parse_cpu_list(",".join(parts)) == expected


@settings(deadline=None)
@given(st.text(alphabet="0123456789,- \nx", max_size=7))  # longer: "0-99999999" is slow
def test_parse_cpu_list_text_is_cpus_or_value_error(text: str) -> None:
    try:
        cpus = parse_cpu_list(text)
    except ValueError:
        return
    assert cpus == sorted(set(cpus)) and all(c >= 0 for c in cpus)
    assert format_cpu_list(cpus) == format_cpu_list(parse_cpu_list(format_cpu_list(cpus)))


@pytest.mark.parametrize("text", ["4194304", "8192-8193,99999999"])
def test_parse_cpu_list_rejects_impossible_cpu_numbers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


@pytest.mark.parametrize("text", ["\u0663", "0-\u0663", "\uff11,2"])
def test_parse_cpu_list_rejects_non_ascii_digits(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


# ------------------------------------------------------------ fixture trees
def expected_domains(topo: Topology) -> tuple[CacheDomain, ...]:
    return tuple(CacheDomain(c.id, 3, c.size, "Unified", format_cpu_list(c.cpus))
                 for c in sorted(topo.l3, key=lambda c: c.id))


@pytest.mark.parametrize("name", ["intel-2s", "amd-ccx", "snc", "amd-abmc", "intel-aet"])
def test_fixture_topologies(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    topo = get_topology(name)
    root = build_sysfs(str(tmp_path / "sys"), topo)
    domains = read_cache_domains(root)
    assert domains == expected_domains(topo)
    host = read_host_cache(root, topo.num_rmids)
    assert host.size == sum(c.size for c in topo.l3)
    assert host.monitors_total == topo.num_rmids
    for cache in topo.l3:
        assert host.domain_size(cache.id) == cache.size


def test_other_levels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    l2 = read_cache_domains(root, level=2)
    assert [d.id for d in l2] == list(INTEL_2S.cpus) and {d.size for d in l2} == {2048 * 1024}
    # L1 Instruction caches are not counted, the L1 Data ones are.
    l1 = read_cache_domains(root, level=1)
    assert len(l1) == len(INTEL_2S.cpus) and {d.type for d in l1} == {"Data"}
    assert read_cache_domains(root, level=4) == ()


def test_missing_root_gives_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert read_cache_domains(str(tmp_path / "nope")) == ()
    assert read_host_cache(str(tmp_path / "nope")).size is None


def _index3(root: str, cpu: int) -> str:
    return os.path.join(root, "devices", "system", "cpu", f"cpu{cpu}", "cache", "index3")


def _put(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


@pytest.mark.parametrize("fname,content", [
    ("size", "lots\n"),
    ("size", ""),
    ("size", None),
    ("level", "three\n"),
    ("level", None),
    ("type", None),
    ("type", "Instruction\n"),
    ("shared_cpu_list", "4-\n"),
    ("shared_cpu_list", None),
    ("id", "x\n"),
])
def test_malformed_or_missing_file_skips_that_index(tmp_path, fname: str,  # type: ignore[no-untyped-def]
                                                    content: str | None) -> None:
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    # Break domain 1 on every one of its cpus: it disappears, domain 0 stays.
    for cpu in INTEL_2S.cpus_by_l3[1]:
        path = os.path.join(_index3(root, cpu), fname)
        if content is None:
            os.unlink(path)
        else:
            _put(path, content)
    assert read_cache_domains(root) == expected_domains(INTEL_2S)[:1]


def test_one_broken_cpu_does_not_hide_its_domain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    first, second, third = INTEL_2S.cpus_by_l3[1][:3]
    _put(os.path.join(_index3(root, first), "size"), "\x00\x01garbage")
    shutil.rmtree(os.path.join(root, "devices", "system", "cpu", f"cpu{second}", "cache"))
    with open(os.path.join(_index3(root, third), "size"), "wb") as f:
        f.write("3660\u00e98K".encode())
    assert read_cache_domains(root) == expected_domains(INTEL_2S)


def test_non_ascii_file_is_skipped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    for cpu in INTEL_2S.cpus_by_l3[0]:
        with open(os.path.join(_index3(root, cpu), "size"), "wb") as f:
            f.write("\u0663\u0663K\n".encode())
    assert read_cache_domains(root) == expected_domains(INTEL_2S)[1:]


def test_index_that_is_a_file_or_odd_entries(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    cpu_dir = os.path.join(root, "devices", "system", "cpu")
    os.makedirs(os.path.join(cpu_dir, "cpufreq"))
    os.makedirs(os.path.join(cpu_dir, "cpu99"))  # offline cpu without a cache dir
    _put(os.path.join(cpu_dir, "online"), ONLINE)
    _put(os.path.join(cpu_dir, "cpu0", "cache", "index9"), "not a dir")
    os.makedirs(os.path.join(cpu_dir, "cpu0", "cache", "indexfoo"))
    assert read_cache_domains(root) == expected_domains(INTEL_2S)


def test_old_kernel_without_id_numbers_by_first_cpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    for cpu in INTEL_2S.cpus:
        os.unlink(os.path.join(_index3(root, cpu), "id"))
    assert [(d.id, d.cpus) for d in read_cache_domains(root)] == [
        (min(c.cpus), format_cpu_list(c.cpus)) for c in INTEL_2S.l3]


def test_first_cpu_of_a_domain_wins_dedup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Domains are deduplicated per id, with numeric cpu order (cpu10 after cpu9)."""
    cpus, size = tuple(range(12)), 1024 * 1024
    topo = Topology("wide", (L3Cache(0, size, cpus),), (MonDomain(0, 0, size, cpus),),
                    snc=False, num_rmids=8, num_closids=16, cbm_len=8)
    root = build_sysfs(str(tmp_path / "sys"), topo)
    _put(os.path.join(_index3(root, 10), "size"), "9999K\n")  # a lie on a late cpu
    assert read_cache_domains(root) == (CacheDomain(0, 3, size, "Unified", "0-11"),)


# ------------------------------------------------ HostCacheReader (per cycle)
def _online(root: str, text: str) -> None:
    _put(os.path.join(root, "devices", "system", "cpu", "online"), text)


def _all_l3_sizes(root: str, topo: Topology, size: str) -> None:
    for cpu in topo.cpus:
        _put(os.path.join(_index3(root, cpu), "size"), size)


def _offline(root: str, cpus: tuple[int, ...]) -> None:
    """What CPU offline does to the tree: the cpu's cache directory goes."""
    for cpu in cpus:
        shutil.rmtree(os.path.join(root, "devices", "system", "cpu", f"cpu{cpu}", "cache"))


def test_reader_walks_once_and_serves_changed_or_removed_files_from_memory(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    _online(root, ONLINE)
    reader = HostCacheReader(root)
    first = reader.get()
    assert first == read_host_cache(root) and first.domains == expected_domains(INTEL_2S)
    _all_l3_sizes(root, INTEL_2S, "1024K\n")  # a walk would now see other sizes
    shutil.rmtree(os.path.join(root, "devices", "system", "cpu", "cpu4", "cache"))
    for _ in range(reader.refresh_every - 1):
        assert reader.get() is first
    assert reader.walks == 1
    assert read_host_cache(root) != first  # the files did change


def test_reader_walks_again_when_the_online_cpus_change(tmp_path
                                                      ) -> None:  # type: ignore[no-untyped-def]
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    _online(root, ONLINE)
    reader = HostCacheReader(root)
    assert reader.get().domains == expected_domains(INTEL_2S)
    # socket 1 goes offline: its cpus lose their cache directories
    _offline(root, INTEL_2S.cpus_by_l3[1])
    _online(root, format_cpu_list(INTEL_2S.cpus_by_l3[0]) + "\n")
    assert reader.get().domains == expected_domains(INTEL_2S)[:1]
    assert reader.walks == 2
    # and comes back
    build_sysfs(root, INTEL_2S)
    _online(root, ONLINE)
    assert reader.get().domains == expected_domains(INTEL_2S)
    assert reader.get().domains == expected_domains(INTEL_2S)
    assert reader.walks == 3


def test_reader_walks_again_every_refresh_every_calls(tmp_path
                                                    ) -> None:  # type: ignore[no-untyped-def]
    """The bound on a walk that raced a hotplug: same online list, new walk."""
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    _online(root, ONLINE)
    reader = HostCacheReader(root, refresh_every=3)
    sizes = []
    for call in range(7):
        if call == 1:
            _all_l3_sizes(root, INTEL_2S, "1024K\n")
        sizes.append(reader.get().size)
    old = sum(c.size for c in INTEL_2S.l3)
    new = len(INTEL_2S.l3) * 1024 * 1024
    assert sizes == [old, old, old, new, new, new, new]
    assert reader.walks == 3  # calls 1, 4 and 7


def test_reader_keeps_no_walk_that_found_no_l3(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A walk that finds nothing (cpu directories unreadable for a moment) is
    not served for the next calls: the next call walks again."""
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    _online(root, ONLINE)
    cpu_dir = os.path.join(root, "devices", "system", "cpu")
    hidden = os.path.join(root, "cpu-hidden")
    os.mkdir(hidden)
    for name in os.listdir(cpu_dir):
        if name.startswith("cpu") and name[3:].isdigit():
            os.rename(os.path.join(cpu_dir, name), os.path.join(hidden, name))
    reader = HostCacheReader(root)
    assert reader.get().domains == ()
    for name in os.listdir(hidden):
        os.rename(os.path.join(hidden, name), os.path.join(cpu_dir, name))
    assert reader.get().domains == expected_domains(INTEL_2S)
    assert reader.get().domains == expected_domains(INTEL_2S)
    assert reader.walks == 2


def test_reader_without_online_file_walks_every_call(tmp_path
                                                    ) -> None:  # type: ignore[no-untyped-def]
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)  # no devices/system/cpu/online
    assert online_cpus(root) is None
    reader = HostCacheReader(root)
    assert reader.get().domains == expected_domains(INTEL_2S)
    _all_l3_sizes(root, INTEL_2S, "1024K\n")
    assert reader.get().size == len(INTEL_2S.l3) * 1024 * 1024
    assert reader.walks == 2
    missing = HostCacheReader(str(tmp_path / "nope"))
    assert missing.get().size is None and missing.get().size is None
    assert missing.walks == 2


def test_online_cpus_is_the_file_text(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = build_sysfs(str(tmp_path / "sys"), INTEL_2S)
    _online(root, "0-3,5\n")
    assert online_cpus(root) == "0-3,5"
    with open(os.path.join(root, "devices", "system", "cpu", "online"), "wb") as f:
        f.write("0-\u0663\n".encode())
    assert online_cpus(root) is None
    _online(root, "0," * 2048 + "4096\n")  # more than the kernel prints (a page)
    assert online_cpus(root) is None


# ------------------------------------------------------------ this machine
def _independent_l3() -> dict[int, int]:
    """L3 id -> bytes, read with ``cat`` in a shell, deduplicated here."""
    dirs = sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cache/index*"))
    out: dict[int, int] = {}
    for d in dirs:
        r = subprocess.run(["sh", "-c", 'cat "$1/level" "$1/type" "$1/id" "$1/size"', "sh", d],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            continue
        level, ctype, cid, size = r.stdout.split()
        if level != "3" or ctype not in ("Unified", "Data"):
            continue
        m = re.fullmatch(r"([0-9]+)K", size)
        assert m, f"unexpected size format on this host: {size!r}"
        out.setdefault(int(cid), int(m.group(1)) * 1024)
    return out


def test_real_sysfs_matches_cat() -> None:
    expected = _independent_l3()
    if not expected:
        pytest.skip("this machine's sysfs shows no L3 cache")
    domains = read_cache_domains("/sys")
    assert {d.id: d.size for d in domains} == expected
    assert read_host_cache("/sys").size == sum(expected.values())
    for d in domains:
        assert d.level == 3 and parse_cpu_list(d.cpus)


def test_real_sysfs_matches_lscpu() -> None:
    """``lscpu`` reads the same source (the kernel's cacheinfo in sysfs). Not
    ``getconf LEVEL3_CACHE_SIZE``: glibc takes that from CPUID, which in a
    virtual machine describes the physical host's package (384 MiB on a CI
    guest whose kernel shows 32 MiB); cache.size follows the kernel."""
    expected = _independent_l3()
    if not expected:
        pytest.skip("this machine's sysfs shows no L3 cache")
    if not shutil.which("lscpu"):
        pytest.skip("lscpu is not installed (Debian util-linux)")
    r = subprocess.run(["lscpu", "-C=NAME,ALL-SIZE", "--bytes"], capture_output=True,
                       text=True, check=True, env={**os.environ, "LC_ALL": "C"})
    rows = dict(line.split() for line in r.stdout.splitlines()[1:] if line.strip())
    assert int(rows["L3"]) == read_host_cache("/sys").size == sum(expected.values())


def test_real_sysfs_reader_matches_a_walk_and_walks_once() -> None:
    if online_cpus("/sys") is None:
        pytest.skip("this machine has no /sys/devices/system/cpu/online")
    reader = HostCacheReader("/sys")
    assert reader.get() == read_host_cache("/sys")
    assert reader.get() == read_host_cache("/sys")
    assert reader.walks == 1
