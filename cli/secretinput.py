"""Secret field values that never touch a command line.

A value on a command line is in ``/proc/PID/cmdline`` for every user of the machine to
read while the command runs. So a secret field (the schema marks them: ``db_passwd``,
``cron_key``, ``http_basic_auth_password``) also takes:

``-``
    the value is read from standard input (with a prompt that does not echo when it is
    a terminal): all of it, less one final line end;
``@PATH``
    the value is read from the file PATH (a regular file, at most 64 KiB): all of it,
    less one final line end;
``@@TEXT``
    the literal value ``@TEXT``.

A value read is refused when it is empty (``null`` resets a field), longer than 64 KiB,
or holds a NUL byte or another control character (a line end before the last one):
saying so without quoting it.
Other fields take their values as written: ``@NAME`` there names a context. Loads no
command-line library (``task add``'s fast path uses it).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from typing import TextIO

from hostctl.contexts.schema import secret_field_names
from hostctl.errors import InvalidInput

#: the largest secret file read (a password or a key, not a data file)
MAX_BYTES = 64 * 1024
HELP = ("A secret field (db_passwd, cron_key, http_basic_auth_password) also takes '-' to "
        "read its value from stdin or '@FILE' to read it from a file, so that it is never "
        "on a command line (others see those in the process list); '@@TEXT' is the "
        "literal '@TEXT'. One final line end is dropped.")


def read_secrets(values: Mapping[str, str], stdin: TextIO | None = None,
                 what: str = "--") -> dict[str, str]:
    """``values`` (field name -> value as given), with each secret field's ``-``,
    ``@PATH`` and ``@@TEXT`` replaced by the value it stands for. ``what`` prefixes
    the field in messages (``--`` for ``--db_passwd``)."""
    if not any(v == "-" or v.startswith("@") for v in values.values()):
        return dict(values)
    secret = secret_field_names()
    out = dict(values)
    from_stdin = [k for k, v in values.items() if k in secret and v == "-"]
    if len(from_stdin) > 1:
        raise InvalidInput(f"only one field can be read from stdin: got "
                           f"{', '.join(what + k for k in from_stdin)}")
    for key, value in values.items():
        if key not in secret:
            continue
        if value == "-":
            out[key] = _checked(key, what, _from_stdin(key, stdin or sys.stdin), "stdin")
        elif value.startswith("@@"):
            out[key] = value[1:]
        elif value.startswith("@"):
            out[key] = _checked(key, what, _from_file(key, what, value[1:]), value[1:])
    return out


def _from_stdin(key: str, stdin: TextIO) -> str:
    if stdin.isatty():
        import getpass

        return getpass.getpass(f"{key}: ")
    return stdin.read(MAX_BYTES + 1)


def _from_file(key: str, what: str, path: str) -> str:
    if not path:
        raise InvalidInput(f"{what}{key} @FILE: name the file after the @")
    try:
        # O_NONBLOCK: a FIFO named by mistake is refused below instead of hanging here
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise InvalidInput(f"{what}{key}: cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{what}{key}: {path} is not a regular file")
        data = b""
        while len(data) <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise InvalidInput(f"{what}{key}: cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"{what}{key}: {path} is not UTF-8 text") from None


def _checked(key: str, what: str, text: str, source: str) -> str:
    if len(text.encode(errors="surrogateescape")) > MAX_BYTES:
        raise InvalidInput(f"{what}{key}: {source} holds more than {MAX_BYTES} bytes")
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise InvalidInput(f"{what}{key}: {source} is empty (to reset the field, give "
                           "null)")
    if "\x00" in text:
        raise InvalidInput(f"{what}{key}: {source} holds a NUL byte")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        # said here, without the value: the store's own message would quote it
        raise InvalidInput(f"{what}{key}: {source} holds a control character (a line "
                           "end before the last?)")
    return text
