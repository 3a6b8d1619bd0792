"""ceilometer-cmt: L3 cache occupancy and memory bandwidth meters for Ceilometer."""

__all__ = ["__version__"]

try:
    from importlib.metadata import version as _version

    __version__ = _version("ceilometer-cmt")
except Exception:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"
