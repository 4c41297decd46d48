"""How a file name is shown: the one helper every output (CLI, JSON, HTML, montage, server) uses.

Names on disk are bytes. Python hands the ones that are not valid UTF-8
(``café.jpg`` saved in Latin-1) to cbir as ``str`` with surrogate escapes
(``os.fsdecode``), which no terminal, JSON encoder or HTML page can carry.
:func:`display_path` writes each such byte as ``\\xe9`` and, for lines read
by people, control characters as ``\\n``, ``\\t``, ``\\x1b``..., so one name
is one line; a backslash of the name itself is doubled, so two names never
show alike. The catalogue keeps the exact name (:mod:`cbir.store.catalogue`);
only what is shown is escaped.
"""

from __future__ import annotations

import os
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: Categories that break a line or a terminal: controls and line/paragraph separators.
_CONTROL_CATEGORIES = ("Cc", "Zl", "Zp")


def display_path(path: str | bytes | os.PathLike, *, controls: bool = True, backslashes: bool = True) -> str:
    """``path`` as printable text: undecodable bytes as ``\\xNN``; with ``controls``, control characters too.

    ``controls=False`` is for JSON, whose own escapes carry a newline exactly.
    ``backslashes=False`` leaves backslashes alone: for text that holds names
    already shown (a message, a JSON document built from ``to_dict``), where
    only what cannot be written at all is escaped.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    if text.isprintable() and (not backslashes or "\\" not in text):  # nearly every name: no copy
        return text
    out = []
    for char in text:
        code = ord(char)
        if char == "\\" and backslashes:  # a backslash of the name itself: doubled, so that \xe9 can only mean a byte
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif controls and unicodedata.category(char) in _CONTROL_CATEGORIES:
            out.append(_NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        else:
            out.append(char)
    return "".join(out)


def natural_key(text: str) -> tuple:
    """A sort key that orders numbers in names by value: ``q50, q150, q250`` (not ``q150, q250, q50``)."""
    import re

    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.casefold()) for part in re.split(r"(\d+)", os.fspath(text)) if part)
