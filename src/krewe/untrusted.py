"""Untrusted text on its way to a log: escaped, so that it cannot forge lines or reach a terminal."""

__all__ = ["untrusted"]


def untrusted(text: str, limit: int = 200) -> str:
    """`text` as a quoted Python literal (newlines, ANSI escapes and non-ASCII escaped), cut at `limit`."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return ascii(cut)
