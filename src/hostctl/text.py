"""Text from outside (a front end's file names, what a drop says, a task's reason) made
safe to print on one line of a terminal or a log."""

from __future__ import annotations

import unicodedata

#: control characters, format characters (bidirectional overrides among them), lone
#: surrogates (a byte that is not UTF-8, from a file name), line and paragraph separators
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str) -> str:
    """``text`` with every character a terminal or a line-based log would act on written
    as its escape (``\\n``, ``\\x1b``, ``\\u202e``; a byte that is not UTF-8 as
    ``\\xNN``); a backslash is doubled, so that an escape is never ambiguous. Plain text
    (any script) is kept as it is."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) not in _UNSAFE_CATEGORIES and ch.isprintable() \
                or ch == " ":
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)
