"""Run something as another user: the one place the tests do that.

Tests that run code as a user other than root (the unprivileged agent, an
attacker, the services' own users) need three things the host may not give:

- a directory that user can reach: ``tempfile``'s default follows ``TMPDIR``,
  which may sit inside a private (0700) directory, so :func:`public_workdir`
  picks a public base itself;
- the user itself, made and removed by the test: :func:`throwaway_user`;
- the venv's interpreter, the plugin and its dependencies, when the
  interpreter (pyenv's, under ``/root``), the venv and/or the checkout sit
  below a directory others may not search: :func:`run_as` runs the command in
  a private mount namespace where each such directory is covered by a tmpfs
  (mode 0755) holding bind mounts of just the entries on the way to those
  trees, at their usual absolute paths. The host's permissions stay as they
  are, and nothing outlives the command's namespace: sudo started inside it
  (the privsep helper) runs as root in the same namespace and finds the
  venv's files by the same paths as root does outside.

Needs root for everything but :func:`public_workdir`, util-linux (``unshare``,
``setpriv``, ``mount``), passwd (``useradd``, ``userdel``) and, for sudoers
rules, sudo (``visudo``).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from ceilometer_cmt.testing.wait import wait_until

VENV_BIN = os.path.dirname(sys.executable)  # not resolved: the venv's bin, not pyenv's
REPO = str(Path(__file__).resolve().parents[2])
SUDOERS_DIR = "/etc/sudoers.d"

# Bases a per-run directory may go in, in order of preference. Not
# tempfile.gettempdir(): TMPDIR may point into a private directory (a 0700
# home), below which no other user reaches whatever the directory's own mode.
# /tmp and /var/tmp are world-searchable on every Linux host, sticky (nobody
# else may remove or rename our directory) and not inside anyone's home.
_PUBLIC_BASES = ("/tmp", "/var/tmp")


def searchable_by_others(path: str) -> bool:
    """Whether a user with no relation to the owner may search ``path``."""
    return bool(os.stat(path).st_mode & stat.S_IXOTH)


def _public(base: str) -> bool:
    """``base`` and each of its ancestors may be searched by anybody, and a
    directory made in it cannot be removed or replaced by another user."""
    real = os.path.realpath(base)
    if not os.path.isdir(real):
        return False
    st = os.stat(real)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return False  # world-writable without the sticky bit
    cur = real
    while True:
        if not searchable_by_others(cur):
            return False
        if cur == "/":
            return True
        cur = os.path.dirname(cur)


def public_base() -> str | None:
    """The first of /tmp, /var/tmp that every user can reach, else None."""
    for base in _PUBLIC_BASES:
        if _public(base):
            return base
    return None


@contextlib.contextmanager
def public_workdir(prefix: str) -> Iterator[str]:
    """A fresh directory, mode 0755, that any user can reach (its every
    ancestor searchable), removed with everything in it on exit, pass or fail.
    Skips the test when the host has no such place."""
    base = public_base()
    if base is None:
        pytest.skip(f"none of {', '.join(_PUBLIC_BASES)} is reachable by other users")
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
    assert not os.path.exists(path), f"{path} could not be removed"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    tmp: str  # its TMPDIR: a 0700 directory it owns, inside a public workdir


def _uids(pid: int) -> tuple[set[int], bool]:
    """The real, effective, saved and filesystem uids of ``pid``, and whether
    it is a zombie; (set(), False) when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return set(), False
    uids: set[int] = set()
    zombie = False
    for line in text.splitlines():
        if line.startswith("Uid:"):
            uids = {int(u) for u in line.split()[1:]}
        elif line.startswith("State:"):
            zombie = line.split()[1] in ("Z", "X")
    return uids, zombie


def user_processes(uid: int) -> list[int]:
    """Live (not zombie) processes with ``uid`` among their uids: started by
    the user, including its set-uid ones (sudo)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            uids, zombie = _uids(int(entry))
            if uid in uids and not zombie:
                out.append(int(entry))
    return out


def kill_user_processes(name: str) -> None:
    """SIGKILL every process of user ``name`` until none is left (a process
    may fork while we look). A user that does not exist has none."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    pids: list[int] = []

    def none_left() -> bool:
        pids[:] = user_processes(uid)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return not pids

    wait_until(none_left, what=f"the processes of {name} to die", timeout=30, interval=0.05,
               error=lambda _: AssertionError(f"processes of {name} survive SIGKILL: {pids}"))


@contextlib.contextmanager
def throwaway_user(workdir: str, prefix: str = "cmtu",
                   sudoers: Callable[[User], str] | None = None) -> Iterator[User]:
    """A system user made for this test (no home, nologin shell, its own
    group), its TMPDIR ``user.tmp`` inside ``workdir`` (a public workdir), and
    optionally ``sudoers(user)`` installed as a sudoers drop-in (checked with
    ``visudo -c`` before it is renamed into place). On exit, pass or fail: the
    sudoers file is removed, every process of the user killed, the user and
    its group deleted, its TMPDIR removed; then all of that is checked."""
    name = prefix + secrets.token_hex(4)
    path = os.path.join(SUDOERS_DIR, "ceilometer-cmt-test-" + name)  # no dot: sudo reads it
    staged = path + ".tmp"  # sudo ignores names with a dot
    tmp = os.path.join(workdir, "tmp-" + name)
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        user = User(name, pw.pw_uid, pw.pw_gid, tmp)
        os.mkdir(tmp, 0o700)
        os.chown(tmp, user.uid, user.gid)
        if sudoers is not None:
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o440)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(sudoers(user))
            subprocess.run(["visudo", "-c", "-q", "-f", staged], check=True)
            os.rename(staged, path)
        yield user
    finally:
        for p in (path, staged):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        uid = None
        with contextlib.suppress(KeyError):
            uid = pwd.getpwnam(name).pw_uid
        kill_user_processes(name)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["userdel", name], check=False, capture_output=True)
    assert not os.path.exists(path) and not os.path.exists(staged)
    assert not os.path.exists(tmp)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    with pytest.raises(KeyError):
        grp.getgrnam(name)
    assert uid is None or not user_processes(uid)


def _needed_trees(extra: Iterable[str]) -> list[str]:
    """What a user needs to reach to run the venv's Python and import the
    plugin: the base interpreter's tree, the venv, the checkout (an editable
    install imports from it), every sys.path entry."""
    paths = [sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, VENV_BIN,
             REPO, *(p for p in sys.path if p), *extra]
    return sorted({os.path.realpath(p) for p in paths if os.path.exists(p)})


def cover_plan(paths: Iterable[str]) -> list[tuple[str, list[str]]]:
    """[(blocked directory, [its entries on the way to ``paths``])], the
    deepest directory first: each blocked directory (others may not search it)
    is covered by a tmpfs holding only those entries, bound back in."""
    need: dict[str, set[str]] = {}
    for path in paths:
        cur = "/"
        for part in os.path.realpath(path).split(os.sep)[1:]:
            if not part:
                continue
            if not searchable_by_others(cur):
                if cur == "/":
                    raise RuntimeError("/ is not searchable by other users")
                need.setdefault(cur, set()).add(part)
            cur = os.path.join(cur, part)
    return sorted(((d, sorted(c)) for d, c in need.items()),
                  key=lambda dc: (-dc[0].count(os.sep), dc[0]))


#: runs as root in the command's new private mount namespace: covers the
#: blocked directories, then drops to the user and execs the command
_SETUP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "as_user_setup.py")


def _as_user_argv(user: User, argv: list[str], cwd: str, env: dict[str, str] | None,
                  reach: Iterable[str], stage: str) -> list[str]:
    """The root command that runs ``argv`` as ``user`` (see :func:`run_as`)."""
    plan = cover_plan(_needed_trees(reach))
    full_env: dict[str, str] = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
                                "HOME": cwd, "TMPDIR": user.tmp, "LANG": "C.UTF-8",
                                "PYTHONWARNINGS": "ignore", **(env or {})}
    assignments = [f"{k}={v}" for k, v in full_env.items()]
    return ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-I", "-S",
            _SETUP, json.dumps(plan), stage, str(user.uid), str(user.gid), *assignments,
            *argv]


def _stage() -> str:
    base = public_base()
    if base is None:
        pytest.skip("no public directory to stage mounts in")
    return tempfile.mkdtemp(prefix="cmt-as-user-", dir=base)


def run_as(user: User, argv: list[str], cwd: str, *, env: dict[str, str] | None = None,
           timeout: float = 180, reach: Iterable[str] = ()
           ) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` in ``cwd`` (which the user must reach), with a
    clean environment: PATH starting with the venv's bin, HOME=cwd,
    TMPDIR=user.tmp, LANG=C.UTF-8, PYTHONWARNINGS=ignore, then ``env``. The
    venv's interpreter, the plugin, its dependencies and ``reach`` are
    reachable even below private directories (see the module's docstring).
    The user's processes may outlive the command: :func:`throwaway_user`
    kills them."""
    stage = _stage()
    try:
        return subprocess.run(_as_user_argv(user, argv, cwd, env, reach, stage),
                              env=_root_env(), cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=False)
    finally:
        os.rmdir(stage)  # not a mount point outside the command's namespace


@contextlib.contextmanager
def popen_as(user: User, argv: list[str], cwd: str, *, env: dict[str, str] | None = None,
             reach: Iterable[str] = ()) -> Iterator[subprocess.Popen[str]]:
    """:func:`run_as` for a command that runs in the background: yields its
    :class:`subprocess.Popen` (text stdout and stderr pipes); on exit, pass
    or fail, it is killed if still running and reaped."""
    stage = _stage()
    try:
        proc = subprocess.Popen(_as_user_argv(user, argv, cwd, env, reach, stage),
                                env=_root_env(), cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                kill_user_processes(user.name)
                proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    finally:
        os.rmdir(stage)


def _root_env() -> Mapping[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def unreachable_reason(user: User, cwd: str) -> str | None:
    """None when ``user`` can run the venv's Python, import the plugin and
    oslo.privsep and run the console script; else why not (for a skip)."""
    probe = run_as(user, [sys.executable, "-c", "import ceilometer_cmt, oslo_privsep"], cwd)
    if probe.returncode != 0:
        return f"{user.name} cannot import the plugin from the venv: {probe.stderr[-500:]}"
    cli = run_as(user, [os.path.join(VENV_BIN, "ceilometer-cmt"), "--help"], cwd)
    if cli.returncode != 0:
        return f"{user.name} cannot run ceilometer-cmt: {cli.stderr[-500:]}"
    return None
