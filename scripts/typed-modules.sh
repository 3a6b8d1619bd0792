#!/usr/bin/env bash
# The modules mypy checks strictly: everything that imports no OpenStack code
# (backends, parsers, simulator, CLI glue). Pollsters and privsep are excluded:
# ceilometer and oslo ship no type information.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
find ceilometer_cmt -name '*.py' \
    -not -path 'ceilometer_cmt/pollsters/*' \
    -not -path 'ceilometer_cmt/privsep/entrypoints.py' | sort
