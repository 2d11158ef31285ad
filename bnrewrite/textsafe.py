"""Make text from model files, data and frameworks safe to print.

A layer name, a config value, a path or a framework's error message is
controlled by whoever made the file. Printed raw it can drive the terminal
(ANSI escapes that clear the screen, move the cursor or fake a log line; a
carriage return that overwrites the line), be read as rich markup (``[/]``
raises, ``[red]`` restyles), or be 100 MB long. :func:`clean` makes any such
text one bounded, inert line:

* control characters -- C0 (``\\x00``-``\\x1f``, tab and newline included),
  DEL, C1 (``\\x80``-``\\x9f``), Unicode format characters (bidi overrides,
  zero-width characters: category Cf), line/paragraph separators and lone
  surrogates (undecodable bytes in file names) -- are shown as Python-style
  escapes (``\\x1b``, ``\\u202e``), so they are visible and do nothing;
* with ``markup=True`` (text that goes to a rich console), rich markup is
  escaped (:func:`rich.markup.escape`);
* text longer than ``limit`` characters (after escaping) is cut, with
  ``...`` and the original length.
"""

from __future__ import annotations

import unicodedata

DEFAULT_LIMIT = 200

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    o = ord(ch)
    if 0x20 <= o < 0x7F:  # fast path: printable ASCII
        return ch
    if ch in _NAMED:
        return _NAMED[ch]
    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
        return ch
    if o <= 0xFF:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def _escaped_prefix(s: str, limit: int | None) -> tuple[str, bool]:
    """The escaped form of the longest prefix of ``s`` that fits in ``limit`` characters; cut or not."""
    # Escaping never shortens, so the first `limit` characters are all that can be shown.
    head = s if limit is None else s[:limit]
    pieces, used, cut = [], 0, len(s) > len(head)
    for ch in head:
        piece = _escape_char(ch)
        if limit is not None and used + len(piece) > limit:
            cut = True
            break
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces), cut


def clean(text, limit: int | None = DEFAULT_LIMIT, *, markup: bool = False, tail: int = 0) -> str:
    """``text`` (any object: ``str()`` of it) as one inert line of at most about ``limit`` characters.

    Control and format characters become visible escapes (``\\x1b``), nothing is
    interpreted; ``markup=True`` also escapes rich markup; longer text is cut to
    ``limit`` characters plus ``... (N chars)``. ``tail`` keeps that many of the
    last characters as well (``head... (N chars) ...tail``: the end of an error
    message says what went wrong). ``limit=None`` never cuts.
    """
    s = text if isinstance(text, str) else str(text)
    out, cut = _escaped_prefix(s, limit)
    if cut:
        tail = max(0, min(tail, limit // 2))
        out, _ = _escaped_prefix(s, limit - tail)
        out += f"... ({len(s):,} chars)"
        if tail:
            kept, used = [], 0
            for ch in reversed(s[-tail:]):
                piece = _escape_char(ch)
                if used + len(piece) > tail:
                    break
                kept.append(piece)
                used += len(piece)
            out += " ..." + "".join(reversed(kept))
    if markup:
        from rich.markup import escape

        out = escape(out)
    return out


def for_console(text, limit: int | None = DEFAULT_LIMIT) -> str:
    """:func:`clean` for a rich console: control characters escaped *and* markup escaped."""
    return clean(text, limit, markup=True)
