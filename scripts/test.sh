#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine, installing what it needs:
# Debian packages (libvirt daemon and headers, FUSE 3, PostgreSQL, RabbitMQ,
# the shell linter), a virtualenv with the plugin and its test extras, the telemetry
# services' own virtualenv (Gnocchi, Aodh); then ruff, mypy and pytest.
# Every service the tests use (libvirtd, the resctrl simulator, PostgreSQL,
# RabbitMQ, Gnocchi, Aodh) is started and stopped by the tests themselves.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh tests/unit/test_meters.py  # extra arguments go to pytest
set -euo pipefail
# The venvs must not be group- or world-writable whatever the caller's umask:
# tests run their code as other users (tests/support/as_user.py) and as root via sudo.
umask 022
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv=${CMT_VENV:-$repo/.venv}

debs=(libvirt-daemon libvirt-dev pkg-config gcc python3-dev python3-venv fuse3 libfuse3-3
      postgresql rabbitmq-server libpq-dev build-essential shellcheck procps sudo
      util-linux passwd linux-libc-dev)
# shellcheck source=scripts/debs.sh
source "$repo/scripts/debs.sh"
ensure_debs "${debs[@]}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -e ".[test]"

CMT_TELEMETRY_VENV=${CMT_TELEMETRY_VENV:-$repo/.venv-telemetry} bash scripts/install-telemetry.sh

echo "== ruff"
"$venv/bin/ruff" check ceilometer_cmt tests bench
echo "== mypy (backends and shared code)"
mapfile -t typed < <(scripts/typed-modules.sh)
"$venv/bin/mypy" "${typed[@]}"
if command -v shellcheck >/dev/null; then
    echo "== shellcheck"
    shopt -s nullglob
    sc=(scripts/*.sh .ci/run devstack/*.sh etc/aodh/*.sh)
    if [ -f devstack/settings ]; then sc+=(devstack/settings); fi
    shellcheck "${sc[@]}"
fi
echo "== pytest"
# The services are installed above: the end-to-end tests must run, never skip.
export CMT_E2E_REQUIRED=1
# pytest's tmp_path directories (below $TMPDIR, else /tmp) go in one directory
# per run, removed when the run ends; directories that other users must reach
# are made by the tests themselves in /tmp (tests/support/as_user.public_workdir).
basetemp=$(mktemp -d "${TMPDIR:-/tmp}/cmt-pytest-XXXXXX")
trap 'rm -rf "$basetemp"' EXIT
PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest -p no:cacheprovider --basetemp "$basetemp" "$@"
