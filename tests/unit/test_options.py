"""etc/ceilometer-cmt.conf.sample is what oslo-config-generator writes from the options now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

GENERATOR_CONFIG = REPO / "etc" / "oslo-config-generator" / "ceilometer-cmt.conf"
SAMPLE = REPO / "etc" / "ceilometer-cmt.conf.sample"


def test_sample_config_is_current(tmp_path: Path) -> None:
    out = tmp_path / "ceilometer-cmt.conf.sample"
    generator = Path(sys.executable).parent / "oslo-config-generator"
    proc = subprocess.run([str(generator), "--config-file", str(GENERATOR_CONFIG),
                           "--output-file", str(out)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "[cmt]" in out.read_text()
    assert out.read_text() == SAMPLE.read_text(), (
        "etc/ceilometer-cmt.conf.sample is stale: run "
        "oslo-config-generator --config-file etc/oslo-config-generator/ceilometer-cmt.conf")
