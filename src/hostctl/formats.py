"""Format versions: of each on-disk record, and of the home as a whole.

Every record hostctl writes carries the format it was written in (``format = 1`` in a
context, a task's first line, a site's secrets record, a backup's manifest, an
application's manifest; ``version`` in a tally). A reader that finds a *newer* format than
it knows refuses the file with :class:`~hostctl.errors.NewerFormat`, one line naming the
file, its format and what this hostctl reads, and changes nothing: a newer hostctl wrote
it, and only a newer hostctl may read it. :func:`refuse_newer` is that check, shared by
every reader so the wording is one.

The home itself has a format, in ``HOME/hostctl-home.toml``::

    format = 2

=======  ================================================================================
home     what it is
=======  ================================================================================
1        the home hostctl 0.1.0 writes: no marker (a home with anything in it but
         ``config.toml`` and no marker is format 1)
2        the same records, and the marker
=======  ================================================================================

A home is made with the marker of the current format (:func:`settle_home`, on the first
write); an older home is brought up to date by ``hostctl upgrade-home``
(``runners/upgrade.py``, docs/upgrade.md), never silently: its steps may read every
record. A home older than :data:`OLDEST_USABLE` is refused until it is upgraded; a home
newer than :data:`HOME_FORMAT` is refused by every command (:func:`check_home`).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from hostctl import __version__
from hostctl.errors import Conflict, MalformedFile, NewerFormat, OperationFailed
from hostctl.files import write_atomic

#: the home's format this hostctl writes
HOME_FORMAT = 2
#: the oldest home format this hostctl runs on without ``hostctl upgrade-home`` (format 1
#: holds the same records as format 2: only the marker is missing)
OLDEST_USABLE = 1
#: the home's marker, beside config.toml
HOME_MARKER = "hostctl-home.toml"
#: what may lie in a home that hostctl has not written into yet
_NOT_CONTENT = frozenset({"config.toml", HOME_MARKER})


def refuse_newer(found: object, known: int, where: object) -> None:
    """Raise NewerFormat if ``found`` (a record's format) is a whole number above
    ``known`` (the newest this hostctl reads); ``where`` names the file."""
    if type(found) is int and found > known:
        raise NewerFormat(
            f"{where} is format {found}, but hostctl {__version__} reads format {known} at "
            "most: a newer hostctl wrote it; upgrade hostctl (nothing was changed)")


def unsupported(found: object, known: int) -> str:
    """The words for a format that is neither this one nor newer (garbage, 0, a string)."""
    return f"unsupported format {found!r} (hostctl {__version__} reads format {known})"


def check_format(found: object, known: int, where: object) -> str | None:
    """None if ``found`` is ``known``; NewerFormat if it is newer; else the problem, for
    the reader to raise as its own error (a malformed file)."""
    if found == known and type(found) is int:
        return None
    refuse_newer(found, known, where)
    return unsupported(found, known)


def marker_path(home: Path) -> Path:
    return home / HOME_MARKER


def read_marker(home: Path) -> int | None:
    """The format the home's marker names; None without a marker (or with a home this
    user may not read: a front end's, that only drops files). MalformedFile if the
    marker is not one."""
    path = marker_path(home)
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError as exc:
        raise MalformedFile(f"cannot read {path}: {exc.strerror}") from exc
    try:
        found = tomllib.loads(raw.decode("utf-8")).get("format")
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedFile(f"malformed {path}: {' '.join(str(exc).split())}") from None
    if type(found) is not int or found < 2:  # 1 has no marker
        raise MalformedFile(f"malformed {path}: 'format' must be a whole number from 2")
    return found


def has_content(home: Path) -> bool:
    """Whether hostctl (any version) has written into the home: anything but
    ``config.toml``, the marker and dot-files (a marker's temporary file)."""
    try:
        return any(not n.startswith(".") and n not in _NOT_CONTENT for n in os.listdir(home))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # not ours to list (a front end's user): not ours to mark either
        return True


def home_format(home: Path) -> int:
    """The home's format: its marker's, else 1 for a home with content, else the current
    one (a home not made yet, or holding only config.toml, is made in it)."""
    found = read_marker(home)
    if found is not None:
        return found
    return 1 if has_content(home) else HOME_FORMAT


def check_home(home: Path) -> int:
    """The home's format, checked: NewerFormat if a newer hostctl wrote it, Conflict if
    it must be upgraded first. Reads one small file; writes nothing."""
    found = home_format(home)
    refuse_newer(found, HOME_FORMAT, marker_path(home))
    if found < OLDEST_USABLE:
        raise Conflict(f"the home {home} is format {found}, older than hostctl "
                           f"{__version__} runs on ({OLDEST_USABLE}): run "
                           "`hostctl upgrade-home` first")
    return found


def write_marker(home: Path, fmt: int = HOME_FORMAT) -> None:
    """Write the home's marker atomically and durably (mode 0600)."""
    text = (f"# the format of this hostctl home (docs/upgrade.md); written by hostctl\n"
            f"format = {fmt}\n")
    write_atomic(marker_path(home), text.encode(), mode=0o600)


_settled: set[Path] = set()


def settle_home(home: Path) -> None:
    """Once per process and home, before its first write: refuse a newer home, and give a
    home that nothing was written into yet the current format's marker. An older home
    with content is left as it is, for ``hostctl upgrade-home``."""
    if home in _settled:
        return
    found = read_marker(home)
    if found is None and not has_content(home):
        try:
            write_marker(home)
        except OSError as exc:
            raise OperationFailed(f"cannot write {marker_path(home)}: {exc.strerror}") from exc
    else:
        check_home(home)
    _settled.add(home)
