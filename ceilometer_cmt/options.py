"""Configuration options of the plugin, group ``[cmt]``."""

from __future__ import annotations

from oslo_config import cfg

GROUP = "cmt"
#: default of log_interval, also used when the option is set to nothing
LOG_INTERVAL = 600

OPTS = [
    cfg.StrOpt(
        "backend",
        default="auto",
        choices=[
            ("auto", "resctrl when mounted with llc_occupancy, else perf when the "
                     "intel_cqm PMU opens, else libvirt when a domain reports cache data"),
            ("resctrl", "the resctrl filesystem (Linux >= 4.14, Intel RDT / AMD PQoS)"),
            ("perf", "the perf intel_cqm PMU (Linux 4.1 - 4.13 only)"),
            ("libvirt", "what libvirt reports in its bulk domain stats"),
        ],
        help="Which interface reads cache occupancy and memory bandwidth.",
    ),
    cfg.StrOpt("resctrl_root", default="/sys/fs/resctrl",
               help="Mount point of the resctrl filesystem."),
    cfg.StrOpt("sysfs_root", default="/sys", help="Root of sysfs."),
    cfg.StrOpt("proc_root", default="/proc", help="Root of procfs."),
    cfg.StrOpt("libvirt_pid_dir", default="/run/libvirt/qemu",
               help="Where libvirt writes <domain name>.pid for each qemu process."),
    cfg.StrOpt("resctrl_group_prefix", default="ceilometer-",
               help="Prefix of the monitor groups this plugin creates and owns. "
                    "Groups without it are never touched."),
    cfg.BoolOpt("resctrl_verify_mount", default=True,
                help="Require resctrl_root to be a resctrl mount (or the "
                     "ceilometer-cmt simulator) per /proc/self/mountinfo. Turn off "
                     "only for fixture trees in tests."),
    cfg.StrOpt("libvirt_uri", default="",
               help="libvirt URI of the libvirt backend; empty uses ceilometer's "
                    "[DEFAULT] libvirt_uri / libvirt_type."),
    cfg.StrOpt("privsep", default="auto", choices=[
        ("auto", "run privileged operations directly when the agent is root, "
                 "else through oslo.privsep"),
        ("always", "always go through the oslo.privsep daemon"),
        ("never", "never use privsep (the agent must be root)"),
    ], help="How the privileged operations reach the kernel: mkdir/rmdir/tasks "
            "writes on resctrl, and perf_event_open and counter reads of the perf "
            "backend (whose counters then live in the privsep daemon)."),
    cfg.IntOpt("log_interval", default=LOG_INTERVAL, min=0,
               help="Seconds between two log lines about the same missing value "
                    "(empty: the default)."),
]


PRIVSEP_GROUP = "cmt_privsep"
#: Where the privsep daemon's own config lives (root-owned; the sudoers rule names it).
DAEMON_CONFIG = "/etc/ceilometer/ceilometer-cmt-privsep.conf"

#: Read by the privsep daemon from its own config file only (beside
#: oslo.privsep's own options of the section, such as helper_command).
PRIVSEP_OPTS = [
    cfg.BoolOpt("allow_simulator", default=False,
                help="Accept the ceilometer-cmt resctrl simulator (a FUSE mount made "
                     "by root) as resctrl_root. For tests and demos only: never on a "
                     "compute node."),
    cfg.IntOpt("rmid_reserve", default=-1, min=-1,
               help="RMIDs the daemon never hands out to monitor groups, kept for "
                    "control groups (libvirt <cachetune>). -1: as many as "
                    "info/L3/num_closids says, at least 1."),
    cfg.IntOpt("mbm_counter_reserve", default=-1, min=-1,
               help="Free MBM counters per L3 domain the daemon never takes, in "
                    "mbm_event mode (Linux 6.18, AMD ABMC), kept for other resctrl "
                    "users (pqos, Telegraf, libvirt): it refuses assignments that "
                    "would leave fewer in info/L3_MON/available_mbm_cntrs, and gives "
                    "back what mbm_assign_on_mkdir took past it on mkdir. -1: an "
                    "eighth of the domain's num_mbm_cntrs, at least 2: the total "
                    "and local counters of at least one group of another tool; of "
                    "32 counters per domain (the kernel documentation's example) 4 "
                    "are kept and 28 serve 14 guests with both events. 0 keeps "
                    "none."),
    cfg.IntOpt("closid_reserve", default=-1, min=-1,
               help="CLOSIDs (control groups) the daemon keeps free when the guard "
                    "(ceilometer-cmt guard) asks it to make a cap group, for libvirt "
                    "<cachetune> and other tools: it refuses a mkdir that would leave "
                    "fewer free (ENOSPC). -1: half of num_closids (the smallest "
                    "info/*/num_closids), as the guard's own policy keeps; see "
                    "doc/kernel-facts-cat.md."),
    cfg.ListOpt("emulators", default=["qemu-system-*", "qemu-kvm"],
                help="Programs whose threads the daemon may place and count: a "
                     "process's /proc/<pid>/exe must match one of these, by basename "
                     "pattern or, for an absolute path, exactly."),
    cfg.ListOpt("qemu_users", default=["root", "qemu", "libvirt-qemu"],
                help="Users (names or uids) a qemu process may run as; users missing "
                     "on this host are ignored."),
    cfg.ListOpt("trusted_code_owners", default=[],
                help="Users besides root who may own the code the daemon runs (the "
                     "helper, the interpreter, what Python imports). Only for devstack, "
                     "whose virtualenv belongs to the stack user, who has full sudo "
                     "anyway; never on a production node, where such a user could run "
                     "code as root. Files writable by group or others are refused "
                     "whoever owns them."),
]

GUARD_GROUP = "cmt_guard"

#: ``ceilometer-cmt guard``: caps a noisy instance's L3 share
#: with CAT; its cap groups are ``<[cmt] resctrl_group_prefix>cap-<share>``.
GUARD_OPTS = [
    cfg.BoolOpt("dry_run", default=True,
                help="Log, notify and report what the guard would do, and write "
                     "nothing. Set to false to let it cap and release."),
    cfg.FloatOpt("cap_above", default=50.0, min=0, max=100,
                 help="Cap an instance holding more than this percent of an L3 "
                      "domain that another running instance shares..."),
    cfg.IntOpt("cap_after", default=3, min=1,
               help="... for this many consecutive cycles."),
    cfg.FloatOpt("release_below", default=30.0, min=0, max=100,
                 help="Release a capped instance below this percent of every L3 "
                      "domain (scaled to its cap share: min(release_below, "
                      "cap_share * release_below / cap_above))..."),
    cfg.IntOpt("release_after", default=10, min=1,
               help="... for this many consecutive cycles."),
    cfg.IntOpt("cap_share", default=25, min=1, max=100,
               help="Percent of the L3 ways a capped instance may fill (a "
                    "contiguous mask inside the default group's)."),
    cfg.IntOpt("closid_reserve", default=-1, min=-1,
               help="CLOSIDs (control groups) the guard always leaves free for "
                    "libvirt <cachetune> and other tools. -1: half of "
                    "info/L3/num_closids."),
    cfg.FloatOpt("interval", default=60.0, min=1,
                 help="Seconds between two guard cycles."),
    cfg.StrOpt("lock_file", default="/run/ceilometer-cmt/guard.lock",
               help="Held (flock) while a guard runs: a second guard on the host "
                    "refuses to start."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def register_privsep_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(PRIVSEP_OPTS, group=PRIVSEP_GROUP)


def register_guard_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(GUARD_OPTS, group=GUARD_GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point of ``oslo.config.opts`` (oslo-config-generator)."""
    return [(GROUP, list(OPTS)), (PRIVSEP_GROUP, list(PRIVSEP_OPTS)),
            (GUARD_GROUP, list(GUARD_OPTS))]
