"""Serving an indexed file in parts (HTTP ``Range``), so that a ``<video>`` element can seek in a video.

One ``bytes=START-END`` range (or ``START-``, or ``-LAST``) is answered with
``206 Partial Content``; several ranges, or one that cannot be satisfied, get
the whole file or ``416``, as RFC 9110 allows. The file is the one opened and
checked by :func:`cbir.retrieval.indexed_files.open_indexed_file`.
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class UnsatisfiableRange(ValueError):
    """A range that lies wholly past the end of the file."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` byte (inclusive) asked for by a ``Range`` header, ``None`` for the whole file.

    Raises :class:`UnsatisfiableRange` for a range that starts past the end.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None  # several ranges, another unit, or nonsense: the whole file is a valid answer
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        count = int(last)
        if count == 0:
            raise UnsatisfiableRange(header)
        return max(0, size - count), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise UnsatisfiableRange(header)
    return start, end
