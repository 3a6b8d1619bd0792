"""Where things are in the checkout, for tests at any depth of the tree."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ceilometer_cmt"
TESTS = REPO / "tests"
PERF_FIXTURES = TESTS / "fixtures" / "perf"
#: the software-event stand-in of the intel_cqm PMU
SOFTWARE = PERF_FIXTURES / "software"
