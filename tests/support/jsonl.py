"""Reading the JSON-lines file a test agent process is still writing."""

from __future__ import annotations

import json
from typing import Any


def whole_lines(path: str) -> list[dict[str, Any]]:
    """The lines written whole so far (a last line without its newline is
    still being written); none before the file exists."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(ln) for ln in f if ln.endswith("\n")]
    except FileNotFoundError:
        return []
