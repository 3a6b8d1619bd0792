#!/usr/bin/env bash
# Install the OpenStack telemetry services the end-to-end test starts on loopback:
# PostgreSQL and RabbitMQ (Debian), Gnocchi 4.7.1 and Aodh 23.0.0 (PyPI).
#
# Gnocchi and Aodh go into their own virtualenv, apart from the one that holds
# ceilometer and this plugin, as in production (services are separate programs
# from the compute-node agent), and so that their server dependencies
# (SQLAlchemy, numpy, pecan, ...) never change the plugin's test environment.
#
# Idempotent: a second run installs nothing and takes about a second.
#
#   scripts/install-telemetry.sh            # venv at <repo>/.venv-telemetry
#   CMT_TELEMETRY_VENV=/some/dir scripts/install-telemetry.sh
#
# Prints the venv path on its last line.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CMT_TELEMETRY_VENV:-$repo/.venv-telemetry}
python=${CMT_TELEMETRY_PYTHON:-python3}

apt_packages=(postgresql rabbitmq-server libpq-dev build-essential python3-venv)
# psycopg2 (not -binary) is built against Debian's libpq-dev: gnocchi's indexer
# needs it (postgresql+psycopg2://; with psycopg 3 gnocchi-upgrade retries forever).
# psycopg 3 (pure Python over Debian's libpq) for aodh: aodh only accepts the
# plain postgresql:// scheme, which SQLAlchemy 2.1 maps to psycopg 3.
pip_requirements=(
    "gnocchi[postgresql]==4.7.1"
    "aodh==23.0.0"
    "psycopg2==2.9.13"
    "psycopg==3.3.9"
    "uwsgi==2.0.31"
    "gnocchiclient==7.2.0"
    "aodhclient==3.12.0"
)

# shellcheck source=scripts/debs.sh
source "$repo/scripts/debs.sh"
ensure_debs "${apt_packages[@]}"

# every transitive dependency pinned too (server stacks break on new SQLAlchemy,
# numpy, ... releases): the versions the end-to-end tests passed with
constraints=$repo/scripts/telemetry-constraints.txt

stamp=$venv/.cmt-telemetry-requirements
wanted=$(printf '%s\n' "${pip_requirements[@]}"; cat "$constraints")
if [[ -x $venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$wanted" ]]; then
    echo "install-telemetry: $venv is current" >&2
else
    [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
    "$venv/bin/python" -m pip install -q --no-binary psycopg2 -c "$constraints" \
        "${pip_requirements[@]}"
    "$venv/bin/python" -c 'import gnocchi, aodh, psycopg2'
    printf '%s\n' "$wanted" >"$stamp"
fi
echo "$venv"
