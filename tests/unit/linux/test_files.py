"""The sysfs attribute reader: one page of ASCII, stripped; anything else raises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ceilometer_cmt.linux.files import MAX_ATTRIBUTE_CHARS, read_attribute


def test_value_without_surrounding_white_space(tmp_path: Path) -> None:
    (tmp_path / "size").write_text("  32768K\n")
    assert read_attribute(str(tmp_path / "size")) == "32768K"


def test_a_full_page_is_read_one_byte_more_is_refused(tmp_path: Path) -> None:
    page = "event=0x" + "0" * (MAX_ATTRIBUTE_CHARS - 10) + "1\n"
    assert len(page) == MAX_ATTRIBUTE_CHARS
    (tmp_path / "ok").write_text(page)
    assert read_attribute(str(tmp_path / "ok")) == page.strip()
    (tmp_path / "long").write_text("0" + page)  # not cut to "event=0x000..."
    with pytest.raises(ValueError, match="longer than a sysfs page"):
        read_attribute(str(tmp_path / "long"))


def test_not_ascii_and_absent_raise(tmp_path: Path) -> None:
    (tmp_path / "type").write_bytes(b"1\xff\n")
    with pytest.raises(UnicodeDecodeError):
        read_attribute(str(tmp_path / "type"))
    with pytest.raises(FileNotFoundError):
        read_attribute(str(tmp_path / "absent"))


@pytest.mark.skipif(not os.path.exists("/sys/devices/system/cpu/online"), reason="no sysfs")
def test_this_hosts_sysfs() -> None:
    online = read_attribute("/sys/devices/system/cpu/online")
    assert online and online == online.strip() and online[0].isdigit()
