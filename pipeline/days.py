"""The day format of the data layout (dt=YYYY-MM-DD). Light on purpose: the DAG file imports it."""
from __future__ import annotations

import re
from datetime import date


def parse_day(text: str) -> str:
    """Exactly YYYY-MM-DD, and a real calendar date."""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        date.fromisoformat(text)
    except (ValueError, TypeError):
        raise ValueError(f"day must be a YYYY-MM-DD date, got {text!r}") from None
    return text
