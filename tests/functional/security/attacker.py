"""What a hostile agent tries against the privsep daemon. Run as the
unprivileged user by tests/functional/security/test_attacks.py, never imported by it.

It starts the daemon the way the agent does (oslo.privsep, ``sudo`` and the
installed rule), calls the daemon's entrypoints directly with whatever it
likes, and prints one JSON object: label -> "done", a return value, or
"<ExceptionType>: <message>".
"""

import json
import logging
import os
import subprocess
import sys
import uuid as uuidlib

from oslo_config import cfg

from ceilometer_cmt.backends.resctrl.fs import RootLock
from ceilometer_cmt.privsep import cat_entrypoints as C
from ceilometer_cmt.privsep import entrypoints as P

logging.basicConfig(level=logging.INFO)  # oslo.privsep says how it started the daemon
facts = json.loads(sys.argv[1])
cfg.CONF(args=[], project="ceilometer-cmt-attacker", default_config_files=[])
cfg.CONF.set_override("helper_command", facts["helper_command"], group="cmt_privsep")
results: dict[str, object] = {}


def attempt(label, fn, *args):
    try:
        out = fn(*args)
        results[label] = "done" if out is None else out
    except Exception as e:
        results[label] = f"{type(e).__name__}: {e}"


root, victim = facts["resctrl"], facts["victim"]
q1, q2 = facts["qemu1"], facts["qemu2"]
U1, U2 = facts["uuid1"], facts["uuid2"]
mine = os.environ["TMPDIR"]

# --- the daemon works for what the agent is meant to do
attempt("ok_mkdir", P.mkdir_group, "", U1)
attempt("ok_tasks", P.write_group_tasks, "", U1, q1["domain"], q1["tids"])
attempt("ok_mkdir_ctrl", P.mkdir_group, "qemu-9-vcpus", U1)

# --- MBM counter assignment (the amd-abmc simulator: mbm_event mode). The group
# got total and local in both domains on mkdir (mbm_assign_on_mkdir)
attempt("ok_assign_release", P.write_group_assignments, "", U1, ["mbm_local_bytes:*=_\n"])
attempt("ok_assign", P.write_group_assignments, "", U1,
        ["mbm_total_bytes:0=e;1=e\n", "mbm_local_bytes:0=e\n"])
attempt("ok_kept_free", P.mbm_counters_kept_free)
attempt("ok_assign_file", lambda: open(os.path.join(root, "mon_groups", "ceilometer-" + U1,
                                                    "mbm_L3_assignments")).read())

# --- the MBM counter reserve: take every counter there is, one by one, then all
# at once, in both of our groups; the daemon keeps its reserve free (2 of 8)
AVAILABLE = os.path.join(root, "info", "L3_MON", "available_mbm_cntrs")
grab = {}
for ctrl in ("", "qemu-9-vcpus"):
    for event in ("mbm_total_bytes", "mbm_local_bytes"):
        for dom in ("0", "1", "*"):
            label = f"{ctrl or 'default'}/{event}:{dom}"
            attempt(label, P.write_group_assignments, ctrl, U1, [f"{event}:{dom}=e\n"])
            grab[label] = results.pop(label)
results["counters_grab"] = grab
attempt("counters_grab_all", P.write_group_assignments, "qemu-9-vcpus", U1,
        ["mbm_total_bytes:*=e\n", "mbm_local_bytes:*=e\n"])
attempt("counters_release_then_grab", P.write_group_assignments, "qemu-9-vcpus", U1,
        ["mbm_local_bytes:*=_\n", "mbm_total_bytes:*=e\n", "mbm_local_bytes:*=e\n"])
results["counters_after_grab"] = open(AVAILABLE).read()

LINE = "mbm_total_bytes:0=_\n"
for label, ctrl, u, lines in (
        # names where the daemon takes names (it takes a uuid: a group without
        # our prefix cannot even be named)
        ("assign_path_as_ctrl", root, U1, [LINE]),
        ("assign_path_as_uuid", "", "mon_groups/ceilometer-" + U1, [LINE]),
        ("assign_foreign_group", "", "pqos-1", [LINE]),
        ("assign_foreign_group_prefixed", "", "ceilometer-pqos-1", [LINE]),
        ("assign_foreign_ctrl_path", "qemu-9-vcpus/mon_groups/libvirt-mon", U1, [LINE]),
        ("assign_escape_uuid", "", "../../" + U1, [LINE]),
        ("assign_victim", victim, U1, [LINE]),
        # lines: another file, another event, injected lines, sizes, types
        ("assign_other_file", "", U1, ["mbm_total_bytes:0=e\n../../tasks"]),
        ("assign_tasks_line", "", U1, [f"{q1['tids'][0]}\n"]),
        ("assign_foreign_event", "", U1, ["llc_occupancy:0=e\n"]),
        ("assign_config_event", "", U1, ["mbm_total_bytes_config:0=0x7f\n"]),
        ("assign_newline_injection", "", U1, ["mbm_total_bytes:0=_\nmbm_local_bytes:0=_\n"]),
        ("assign_star_tail", "", U1, ["mbm_total_bytes:*=_;../../tasks\n"]),
        ("assign_huge_line", "", U1, ["mbm_total_bytes:" + "0=_;" * 250000 + "0=_\n"]),
        ("assign_many_lines", "", U1, [LINE] * 10000),
        ("assign_nul", "", U1, ["mbm_total_bytes:0=_\x00\n"]),
        ("assign_unicode_digit", "", U1, ["mbm_total_bytes:\u0661=_\n"]),
        ("assign_negative_domain", "", U1, ["mbm_total_bytes:-1=_\n"]),
        ("assign_not_a_list", "", U1, LINE),
        ("assign_not_text", "", U1, [42]),
        ("assign_nothing", "", U1, [])):
    attempt(label, P.write_group_assignments, ctrl, u, lines)

# --- paths where names belong (the old API took a root and a relative path)
attempt("path_as_ctrl", P.mkdir_group, root, "mon_groups/ceilometer-x")
attempt("path_as_uuid", P.mkdir_group, "", "mon_groups/ceilometer-x")
for i, ctrl in enumerate(["..", "../..", victim, "/", "/proc/self/root" + root, "info",
                          "mon_groups", "x\n", "x\x00y", "a" * 300, "qemu-9-vcpus/../..",
                          "qemu-9-vcpus/mon_groups/..", mine, 42]):
    attempt(f"ctrl_{i}", P.mkdir_group, ctrl, U2)
# a symlinked mon_groups the user made, named as a control group
os.symlink(victim, os.path.join(mine, "mon_groups"))
attempt("ctrl_symlinked_mon_groups", P.mkdir_group, mine, U2)
attempt("ctrl_symlinked_relative", P.mkdir_group, os.path.relpath(mine, root), U2)
os.unlink(os.path.join(mine, "mon_groups"))
for i, u in enumerate([U2 + "\n", U2.upper(), "../../" + U2, "", "x", 12,
                       U2 + "/../../victim", U2[:-1] + "\x00"]):
    attempt(f"uuid_{i}", P.mkdir_group, "", u)

# --- removing what is not ours
attempt("rmdir_foreign", P.rmdir_group, "", "pqos-1")
attempt("rmdir_foreign_ctrl", P.rmdir_group, "qemu-9-vcpus", "libvirt-mon")
attempt("rmdir_escape", P.rmdir_group, "", "ceilometer-../../victim")
attempt("rmdir_newline", P.rmdir_group, "", "ceilometer-x\n")
attempt("rmdir_victim", P.rmdir_group, victim, "ceilometer-victim")
attempt("rmdir_ctrl_itself", P.rmdir_group, "", "ceilometer-../qemu-9-vcpus")

# --- thread ids that are not the named guest's qemu threads
for label, tids in (("tid_pid1", [1]), ("tid_sim", [facts["simulator_pid"]]),
                    ("tid_self", [os.getpid()]), ("tid_negative", [-42]), ("tid_zero", [0]),
                    ("tid_huge", [2**40]), ("tid_string", ["1337"]), ("tid_bool", [True]),
                    ("tid_other_guest", [q2["tids"][0]]), ("tid_many", list(range(1, 5001)))):
    attempt(label, P.write_group_tasks, "", U1, q1["domain"], tids)
attempt("tid_foreign_group", P.write_group_tasks, "", U2, q2["domain"], [q2["foreign_tid"]])
attempt("domain_escape", P.write_group_tasks, "", U1, "../" + q1["domain"], q1["tids"])
attempt("domain_unknown", P.write_group_tasks, "", U1, "instance-ffffffff", q1["tids"])

# --- a process of our own that looks like the guest's qemu on its command line
fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                         "-name", f"guest={q1['domain']},debug-threads=on"])
try:
    attempt("tasks_fake_qemu", P.write_group_tasks, "", U1, q1["domain"], [fake.pid])
    attempt("perf_fake_qemu", P.perf_open, facts["events"], fake.pid, fake.pid, q1["domain"])
    attempt("perf_pid1", P.perf_open, facts["events"], 1, 1, q1["domain"])
finally:
    fake.kill()
    fake.wait()

# --- perf: events of the daemon's own PMU only, on the guest's threads only
handles = None
try:
    handles = P.perf_open(facts["events"], q1["pid"], q1["tids"][0], q1["domain"])
    results["perf_ok"] = len(handles)
except Exception as e:
    results["perf_ok"] = f"{type(e).__name__}: {e}"
attempt("perf_raw_event", P.perf_open, [[4, 0xC0, 0, 0]], q1["pid"], q1["pid"], q1["domain"])
attempt("perf_other_guest_thread", P.perf_open, facts["events"], q1["pid"], q2["tids"][0],
        q1["domain"])
if handles:
    P.perf_close(handles)

# --- the user-namespace attack: a tmpfs over the resctrl path in our own mount
# namespace, then the path through /proc/<pid>/root (realpath says "/")
ns = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, text=True)
if ns.returncode != 0:
    results["userns"] = f"unavailable: {ns.stderr.strip()[:200]}"
else:
    holder = subprocess.Popen(
        ["unshare", "-Urm", "sh", "-c",
         f"mount -t tmpfs cmt-attack {root} && mkdir -p {root}/mon_groups && "
         f"ln -s {victim}/secret {root}/tasks && echo ready && exec sleep 120"],
        stdout=subprocess.PIPE, text=True)
    try:
        ready = holder.stdout.readline().strip()
        via = f"/proc/{holder.pid}/root{root}"
        results["userns"] = ready
        attempt("userns_ctrl", P.mkdir_group, via, U2)
        attempt("userns_rmdir", P.rmdir_group, via, "ceilometer-x")
        attempt("userns_tasks", P.write_group_tasks, via, U1, q1["domain"], q1["tids"])
        attempt("userns_assign", P.write_group_assignments, via, U1, [LINE])
    finally:
        holder.kill()
        holder.wait()

# --- the RMID budget: 10,000 mkdirs
made, refusals, other = [], set(), []
for i in range(10000):
    u = str(uuidlib.UUID(int=i + 1, version=4))
    try:
        P.mkdir_group("", u)
        made.append(u)
    except OSError as e:
        refusals.add(f"{type(e).__name__} {e.errno}: {e.strerror}")
    except Exception as e:
        other.append(f"{type(e).__name__}: {e}")
results["flood"] = {"made": len(made), "refusals": sorted(refusals), "other": other[:5]}
# every mkdir got counters from the kernel (mbm_assign_on_mkdir): past the reserve
# the daemon gave them back
results["flood_counters"] = open(AVAILABLE).read()
results["flood_removed"] = 0
for u in made:
    P.rmdir_group("", "ceilometer-" + u)
    results["flood_removed"] += 1

# --- the guard's CAT writes: its cap groups only, lines the daemon
# checks itself, the CLOSID reserve, qemu threads only, and never a thread out of
# another tool's control group
CAP, FOREIGN = "ceilometer-cap-25", facts["cachetune"]
cap_dir = os.path.join(root, CAP)


def read(*path):
    with open(os.path.join(*path), encoding="ascii") as f:
        return f.read()


attempt("cat_ok_mkdir", C.make_cap_group, CAP)
results["cat_counters_after_mkdir"] = open(AVAILABLE).read()  # the reserve: given back
with RootLock(root):  # held around a cycle, as the guard does: the daemon works under it
    attempt("cat_ok_schemata", C.write_cap_schemata, CAP, ["L3:0=f;1=f\n"])
attempt("cat_ok_move", C.move_cap_threads, CAP, U1, q1["domain"], q1["tids"])
results["cat_ok_state"] = {
    "schemata": read(cap_dir, "schemata"),
    "tasks": sorted(map(int, read(cap_dir, "tasks").split())),
    "mon_tasks": sorted(map(int, read(cap_dir, "mon_groups", "ceilometer-" + U1,
                                      "tasks").split()))}
for i, name in enumerate(["", "info", "..", ".", "mon_groups", root, "a/b", FOREIGN, "pqos-1",
                          "cap-25", "ceilometer-cap-0", "ceilometer-cap-101", "ceilometer-cap-025",
                          "ceilometer-cap-25\n", "ceilometer-cap-25/../x", "ceilometer-" + U1,
                          "../" + CAP, victim, 42, None]):
    attempt(f"cat_mkdir_{i}", C.make_cap_group, name)
    attempt(f"cat_rmdir_{i}", C.remove_cap_group, name)
attempt("cat_schemata_foreign", C.write_cap_schemata, FOREIGN, ["L3:0=3\n"])
attempt("cat_schemata_default", C.write_cap_schemata, "", ["L3:0=3\n"])
attempt("cat_schemata_info", C.write_cap_schemata, "info", ["L3:0=3\n"])
schemata_before = read(cap_dir, "schemata")
for label, lines in {
        "non_contiguous": ["L3:0=f0f\n"], "outside_cbm_mask": ["L3:0=1ffff\n"],
        "below_min_cbm_bits": ["L3:0=1\n"], "zero": ["L3:0=0\n"], "unknown_domain": ["L3:5=f\n"],
        "mb_line": ["MB:0=100\n"], "l3code_without_cdp": ["L3CODE:0=f\n"],
        "two_lines_in_one": ["L3:0=3\nL3:1=3\n"], "huge": ["L3:" + "0=f;" * 250000 + "\n"],
        "many_lines": ["L3:0=3\n"] * 10000, "nul": ["L3:0=3\x00\n"],
        "other_file": ["L3:0=3\n../../tasks"], "tasks_line": [f"{q1['tids'][0]}\n"],
        "duplicate_domain": ["L3:0=3;0=ff\n"], "not_hex": ["L3:0=zz\n"],
        "unicode_digit": ["L3:\u0661=3\n"], "not_a_list": "L3:0=3\n", "not_text": [42],
        "nothing": []}.items():
    attempt(f"cat_line_{label}", C.write_cap_schemata, CAP, lines)
results["cat_schemata_unchanged"] = read(cap_dir, "schemata") == schemata_before
attempt("cat_move_self", C.move_cap_threads, CAP, U1, q1["domain"], [os.getpid()])
attempt("cat_move_pid1", C.move_cap_threads, "", U1, q1["domain"], [1])
attempt("cat_move_other_guest", C.move_cap_threads, CAP, U1, q1["domain"], q2["tids"][:1])
attempt("cat_move_cachetune_back", C.move_cap_threads, "", U2, q2["domain"], [q2["cachetune_tid"]])
attempt("cat_move_cachetune_in", C.move_cap_threads, CAP, U2, q2["domain"], [q2["cachetune_tid"]])
attempt("cat_move_into_foreign", C.move_cap_threads, FOREIGN, U1, q1["domain"], q1["tids"])
attempt("cat_move_pqos_thread", C.move_cap_threads, CAP, U2, q2["domain"], [q2["foreign_tid"]])

# the CLOSIDs: every cap group there may be, until the reserve
made, refusals = [], set()
for share in range(1, 101):
    name = f"ceilometer-cap-{share}"
    if name == CAP:
        continue
    try:
        C.make_cap_group(name)
        made.append(name)
    except OSError as e:
        refusals.add(f"{type(e).__name__} {e.errno}: {e.strerror}")
groups = [d for d in os.listdir(root) if d not in ("info", "mon_groups", "mon_data")
          and os.path.isdir(os.path.join(root, d))]
results["cat_closids"] = {"made": len(made), "refusals": sorted(refusals),
                          "groups_at_refusal": len(groups)}
for name in made:
    C.remove_cap_group(name)
attempt("cat_ok_move_back", C.move_cap_threads, "", U1, q1["domain"], q1["tids"])
results["cat_ok_back_tasks"] = sorted(map(int, read(root, "mon_groups", "ceilometer-" + U1,
                                                    "tasks").split()))
attempt("cat_ok_rmdir", C.remove_cap_group, CAP)

attempt("ok_rmdir_ctrl", P.rmdir_group, "qemu-9-vcpus", "ceilometer-" + U1)
attempt("ok_rmdir", P.rmdir_group, "", "ceilometer-" + U1)
print(json.dumps(results))
