"""Run as root in a command's new private mount namespace (see
:func:`tests.support.as_user.run_as`): cover each blocked directory (deepest
first) with a tmpfs built at a public staging directory, holding the entries
the user must reach bound from below, then drop to the user and exec the
command.

    python -I -S as_user_setup.py PLAN_JSON STAGE UID GID [VAR=VALUE ...] ARGV...

Standard library only: it is started by path, before anything else is
reachable.
"""

import json
import os
import subprocess
import sys


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def cover(plan: list[tuple[str, list[str]]], stage: str) -> None:
    for blocked, entries in plan:
        mount("-t", "tmpfs", "-o", "mode=0755,size=1m", "cmt-as-user", stage)
        for entry in entries:
            src, dst = os.path.join(blocked, entry), os.path.join(stage, entry)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            elif os.path.isdir(src):
                os.mkdir(dst)
                mount("--rbind", src, dst)
            else:
                open(dst, "x").close()
                mount("--bind", src, dst)
        mount("--move", stage, blocked)


def main(argv: list[str]) -> None:
    plan, stage, uid, gid = json.loads(argv[1]), argv[2], argv[3], argv[4]
    cover(plan, stage)
    os.execvp("setpriv", ["setpriv", "--reuid=" + uid, "--regid=" + gid, "--clear-groups",
                          "--", "env", "-i", *argv[5:]])


if __name__ == "__main__":
    main(sys.argv)
