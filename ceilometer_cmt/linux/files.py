"""The one reader of small sysfs attribute files.

A sysfs attribute (``type``, ``events/llc_occupancy``, ``cache/index3/size``,
``devices/system/cpu/online``) is one value the kernel prints into at most one
page (``sysfs_emit()``), in ASCII, with a trailing newline.
:func:`read_attribute` reads it that way: a longer file is not the kernel's
and is refused rather than cut (``event=0x000...01`` cut at a page would read
as 0), a non-ASCII byte is a ``UnicodeDecodeError``, and errors are raised for
the caller to map (both are ``ValueError``; a missing file is
``FileNotFoundError``).

resctrl's files are not read here: they are seq_files without the page bound,
several lines long, and read by :func:`ceilometer_cmt.backends.resctrl.fs.read_text`.
"""

from __future__ import annotations

#: sysfs attributes are at most one page; anything longer is not the kernel's
MAX_ATTRIBUTE_CHARS = 4096


def read_attribute(path: str) -> str:
    """The value of the sysfs attribute at ``path``, without surrounding white
    space. Raises ``OSError``, or ``ValueError`` for a file longer than a page
    or not ASCII."""
    with open(path, encoding="ascii") as f:
        text = f.read(MAX_ATTRIBUTE_CHARS + 1)
    if len(text) > MAX_ATTRIBUTE_CHARS:
        raise ValueError(f"longer than a sysfs page ({MAX_ATTRIBUTE_CHARS} bytes)")
    return text.strip()
