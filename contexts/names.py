"""Context names: ``@`` + ``[a-z0-9][a-z0-9._-]*``, at most 235 characters, no ``..``.

The ``@`` is optional on input and always shown on output. The bare name (without ``@``)
is the file name stem under ``contexts/``, so the rules are what keeps every context inside
that folder: no slash, no ``..``, no leading dot, nothing a shell or a file system treats
specially. 235 is Aegir's limit (its context table's column), which leaves room for a
suffix and stays under the usual 255-byte file name limit.
"""

from __future__ import annotations

import re

from hostctl.errors import InvalidName

MAX_LENGTH = 235
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


def shown(raw: str, limit: int = 60) -> str:
    """A user-supplied string made safe to print in a one-line message."""
    text = raw if len(raw) <= limit else raw[:limit] + "..."
    return repr(text) if not text.isprintable() or not text else f"'{text}'"


def parse_name(raw: str) -> str:
    """Validate a context name as typed; return the bare name (without ``@``)."""
    bare = raw[1:] if raw.startswith("@") else raw
    why = _problem(bare)
    if why:
        raise InvalidName(f"invalid context name {shown(raw)}: {why}")
    return bare


def is_valid(bare: str) -> bool:
    return not _problem(bare)


def display(bare: str) -> str:
    return f"@{bare}"


def _problem(bare: str) -> str:
    if not bare:
        return "the name is empty"
    if len(bare) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if ".." in bare:
        return "'..' is not allowed"
    if not _NAME.fullmatch(bare):
        return (
            "use lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return ""
