#!/usr/bin/env bash
# The main job on a fresh Debian machine, as root: install what the demo needs
# (FUSE 3, libvirt headers to build libvirt-python, a virtualenv with the
# plugin), then run `ceilometer-cmt demo`: a resctrl simulator, a libvirt
# test-driver host with Nova-like instances and stand-in qemu processes, and
# real ceilometer polling cycles shown live. No OpenStack, no RDT hardware.
#
# Built-in default: 30 cycles, 2 s apart (about a minute); Ctrl-C stops it
# earlier. Everything it made (mount, processes, temp files) is removed on exit.
#   scripts/demo.sh                       # the default
#   scripts/demo.sh --cycles 0            # until Ctrl-C
#   scripts/demo.sh --json --cycles 3     # samples as JSON lines
set -euo pipefail
umask 022  # the venv is never group- or world-writable, whatever the caller's umask
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv=${CMT_VENV:-$repo/.venv}

debs=(fuse3 libfuse3-3 libvirt-dev pkg-config gcc python3-dev python3-venv)
# shellcheck source=scripts/debs.sh
source "$repo/scripts/debs.sh"
ensure_debs "${debs[@]}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -e ".[libvirt,simulator]"

args=("$@")
if ((${#args[@]} == 0)); then
    args=(--cycles 30)
elif [ "${args[0]}" = --cycles ] && [ "${args[1]:-}" = 0 ]; then
    args=("${args[@]:2}")
fi
exec "$venv/bin/ceilometer-cmt" demo "${args[@]}"
