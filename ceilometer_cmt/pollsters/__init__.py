"""Ceilometer pollsters (the only modules, with options.py and privsep/, cmd/ and testing/
that import OpenStack code)."""
