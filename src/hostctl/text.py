"""Text from outside (a front end's file names, what a drop says, a task's reason) made
safe to print on one line of a terminal or a log."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

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


#: what may stand right before or after a value in a line of output: white space, quotes,
#: brackets and the punctuation that separates a value from its key or the next value
#: (``key=VALUE``, ``key: VALUE``, ``user:VALUE@host``). Not ``/ . - _``: a secret that
#: also occurs inside a path or a host name is left there, whole.
_EDGE = r"""\s"'`=:,;@()\[\]{}<>"""


class Redactor:
    """Replaces each secret where it stands as a whole value, never inside another word:
    replacing every occurrence would mangle a path or a name that happens to contain it,
    and, beside the path, show what the secret is. Secrets under ``min_length`` characters
    are left alone (they occur everywhere)."""

    def __init__(self, secrets: Iterable[str | bytes], mark: str = "[secret]",
                 min_length: int = 4) -> None:
        texts = {s.decode("utf-8", "surrogateescape") if isinstance(s, bytes) else s
                 for s in secrets}
        values = sorted((v for v in texts if len(v) >= min_length), key=len, reverse=True)
        self.mark = mark
        self._text: re.Pattern[str] | None = None
        self._bytes: re.Pattern[bytes] | None = None
        self._one_text: re.Pattern[str] | None = None
        self._one_bytes: re.Pattern[bytes] | None = None
        if values:
            # a value stands between two edges; secrets written one after the other
            # (a value twice) are a value too; a full stop ends one before white space
            body = "|".join(re.escape(v) for v in values)
            pattern = f"(?<![^{_EDGE}])(?:{body})+(?=[{_EDGE}]|\\.(?:\\s|$)|$)"
            self._text = re.compile(pattern)
            self._bytes = re.compile(pattern.encode("utf-8", "surrogateescape"))
            self._one_text = re.compile(body)
            self._one_bytes = re.compile(body.encode("utf-8", "surrogateescape"))

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, value: str) -> str:
        if self._text is None or self._one_text is None:
            return value
        one = self._one_text
        return self._text.sub(lambda m: one.sub(self.mark, m.group()), value)

    def data(self, value: bytes) -> bytes:
        if self._bytes is None or self._one_bytes is None:
            return value
        one, mark = self._one_bytes, self.mark.encode()
        return self._bytes.sub(lambda m: one.sub(mark, m.group()), value)
