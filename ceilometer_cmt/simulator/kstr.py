"""The kernel's string helpers that the newer resctrl files parse with.

``kstrtoul`` and ``kstrtobool`` (``lib/kstrtox.c``), ``strsep`` and
``strim`` (``lib/string.c``, ``lib/string_helpers.c``), as the ``*_write``
functions of ``fs/resctrl/monitor.c`` and ``rdtgroup.c`` use them.
"""

from __future__ import annotations

_HEX = "0123456789abcdefABCDEF"
_SPACE = " \t\n\v\f\r"  # the kernel's isspace()


def kstrtoul(text: str | None, base: int) -> int | None:
    """``kstrtoul(s, base)``: an optional ``+``, digits (base 16 also takes
    ``0x``), one trailing newline allowed, nothing else; None on error
    (-EINVAL or -ERANGE)."""
    if text is None:
        return None
    if text.endswith("\n"):
        text = text[:-1]
    if text.startswith("+"):
        text = text[1:]
    if base == 16 and text[:2] in ("0x", "0X"):
        text = text[2:]
    digits = _HEX if base == 16 else "0123456789"
    if not text or any(c not in digits for c in text):
        return None
    value = int(text, base)
    return value if value < 2**64 else None


def kstrtobool(text: str) -> bool | None:
    """``kstrtobool()``: only the first (two) characters count: ``1yYtT`` /
    ``0nNfF``, ``on``/``off`` in any case; None on error (-EINVAL)."""
    if not text:
        return None
    first = text[0]
    if first in "yYtT1":
        return True
    if first in "nNfF0":
        return False
    if first in "oO" and len(text) > 1:
        if text[1] in "nN":
            return True
        if text[1] in "fF":
            return False
    return None


def strsep(text: str | None, sep: str) -> tuple[str | None, str | None]:
    """``strsep(&text, sep)``: (the token, the rest or None at the end)."""
    if text is None:
        return None, None
    head, found, rest = text.partition(sep)
    return head, rest if found else None


def strim(text: str) -> str:
    """``strim()``: leading and trailing whitespace removed."""
    return text.strip(_SPACE)
