"""``python -m ceilometer_cmt.simulator MOUNTPOINT ...`` (what Simulator spawns)."""

import sys

from ceilometer_cmt.simulator.runner import simulate_main

sys.exit(simulate_main())
