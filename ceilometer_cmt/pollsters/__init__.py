"""Ceilometer pollsters (the only modules, with options.py and privileged.py,
that import OpenStack code)."""
