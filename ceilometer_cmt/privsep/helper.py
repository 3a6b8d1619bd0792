"""``ceilometer-cmt-privsep-helper``: the privsep daemon's own start, for sudo.

oslo.privsep's ``privsep-helper`` reads whatever config files it is given,
logging options included (``log_dir``, ``log_config_append``: a file made or
code run as root), and the context named on its command line. This helper is
what the sudoers rule allows instead. Before it starts the daemon it:

- takes exactly ``--config-file F --privsep_context
  ceilometer_cmt.privsep.entrypoints.cmt_pctxt --privsep_sock_path S`` (the form
  oslo.privsep builds from ``[cmt_privsep] helper_command``), nothing else;
- refuses to start when ``F``, the helper, the interpreter, or any directory
  Python imports from (and their parents) could be changed by a user other
  than root: each must be owned by root (or, for the code, by one of the
  ``[cmt_privsep] trusted_code_owners`` of ``F``: devstack only) and writable
  by nobody else;
- reads ``F`` with no logging options registered, so none is honoured: the
  daemon logs only through privsep's channel to the agent, and to stderr
  before it is connected.

It then serves the context as oslo.privsep's own helper does
(``oslo_privsep.daemon.helper_main``).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import Iterable, Sequence

CONTEXT = "ceilometer_cmt.privsep.entrypoints.cmt_pctxt"
PROG = "ceilometer-cmt-privsep-helper"
LOG = logging.getLogger(__name__)


class Refused(Exception):
    """The daemon will not start; the message says why."""


def parse_argv(argv: Sequence[str]) -> tuple[str, str]:
    """(config file, socket path) from exactly the command line sudo allows."""
    args = list(argv)
    if (len(args) != 6 or args[0] != "--config-file" or args[2] != "--privsep_context"
            or args[3] != CONTEXT or args[4] != "--privsep_sock_path"):
        raise Refused(f"usage: {PROG} --config-file FILE --privsep_context {CONTEXT} "
                      "--privsep_sock_path PATH (the config file is required)")
    conf, sock = args[1], args[5]
    if not os.path.isabs(conf) or not os.path.isabs(sock):
        raise Refused("the config file and the socket path must be absolute")
    return conf, sock


def check_root_owned(path: str, what: str, owners: frozenset[int] = frozenset({0})) -> None:
    """``path`` and every directory above it: owned by root (or ``owners``),
    writable by nobody else (a sticky directory such as /tmp is fine above it:
    others cannot rename or remove the owner's entries there)."""
    real = os.path.realpath(path)
    cur = real
    while True:
        try:
            st = os.lstat(cur)
        except OSError as e:
            raise Refused(f"{what} {path}: cannot check {cur}: {e.strerror}") from None
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and cur != real
        if st.st_uid not in owners:
            raise Refused(f"{what} {path} is not safe: {cur} is owned by uid {st.st_uid}, "
                          "not root")
        if st.st_mode & 0o022 and not sticky_dir:
            raise Refused(f"{what} {path} is not safe: {cur} is writable by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o})")
        if cur == "/":
            return
        cur = os.path.dirname(cur)


def code_paths() -> list[tuple[str, str]]:
    """What the daemon runs: the helper, the interpreter, the plugin's and
    oslo.privsep's packages, and every existing directory on sys.path."""
    import oslo_privsep

    import ceilometer_cmt

    out = [(sys.argv[0], "the helper"), (sys.executable, "the Python interpreter"),
           (os.path.dirname(ceilometer_cmt.__file__), "the ceilometer_cmt package"),
           (os.path.dirname(oslo_privsep.__file__), "the oslo_privsep package")]
    out.extend((p, "the import path entry") for p in sys.path if p and os.path.isdir(p))
    return out


def check_config(conf: str) -> None:
    st = os.lstat(conf) if os.path.lexists(conf) else None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise Refused(f"the config file {conf} is missing or not a regular file")
    check_root_owned(conf, "the config file")


def code_owners(conf: str) -> frozenset[int]:
    """root, and the ``[cmt_privsep] trusted_code_owners`` of the (checked) config."""
    import pwd

    from oslo_config import cfg

    from ceilometer_cmt import options

    c = cfg.ConfigOpts()
    options.register_privsep_opts(c)
    c(args=["--config-file", conf], project="ceilometer-cmt-privsep",
      default_config_files=[], default_config_dirs=[])
    uids = {0}
    for user in c[options.PRIVSEP_GROUP].trusted_code_owners:
        user = user.strip()
        try:
            uids.add(int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid)
        except KeyError:
            raise Refused(f"trusted_code_owners names no such user: {user!r}") from None
    return frozenset(uids)


def check_code(code: Iterable[tuple[str, str]], owners: frozenset[int]) -> None:
    for path, what in code:
        check_root_owned(path, what, owners)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"{PROG}: %(levelname)s %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        conf, sock_path = parse_argv(args)
        check_config(conf)
        check_code(code_paths(), code_owners(conf))
    except Refused as e:
        print(f"{PROG}: refusing to start the privsep daemon: {e}", file=sys.stderr)
        return 2
    return serve(conf, sock_path)


def serve(conf: str, sock_path: str) -> int:
    """What ``oslo_privsep.daemon.helper_main`` does after its option parsing."""
    from oslo_config import cfg
    from oslo_privsep import comm, daemon

    from ceilometer_cmt.privsep.entrypoints import cmt_pctxt

    cfg.CONF(args=["--config-file", conf], project="ceilometer-cmt-privsep",
             default_config_files=[], default_config_dirs=[])
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sock_path)
    daemon.set_cloexec(sock)
    channel = comm.ServerChannel(sock)
    # the client listens on the socket: it may hold the resctrl root's flock
    # around its requests (cat_root)
    from ceilometer_cmt.privsep import cat_root

    peer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    cat_root.set_client(struct.unpack("3i", peer)[0])
    if os.fork() != 0:
        return 0  # the parent: sudo and the client's Popen see the start succeed
    # The child serves, still in its client's process group, as privsep's own does.
    daemon.replace_logging(daemon.PrivsepLogHandler(channel))
    LOG.info("ceilometer-cmt privsep daemon starting (config %s)", conf)
    try:
        daemon.Daemon(channel, cmt_pctxt).run()
    except Exception as e:
        LOG.exception(e)
        sys.exit(str(e))
    sys.exit(0)
