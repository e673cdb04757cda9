"""Aegir 3's contexts read into hostctl's: ``hostctl import aegir`` (docs/aegir-import.md).

Aegir's back end keeps each context in a drush alias file,
``~aegir/.drush/NAME.alias.drushrc.php``, written by ``provision-save`` through provision's
template ``provision_drushrc_alias.tpl.php`` (``<?php``, a space and a new line, then)::

    <?php
    $aliases['NAME'] = array (
      'context_type' => 'site',
      'aliases' =>
      array (
        0 => 'www.example.com',
      ),
      ...
    );

that is ``<?php``, then one assignment of PHP's ``var_export()`` output. The files are
never run: :func:`parse_alias_file` reads exactly that shape with a strict parser of
var_export's output (arrays with int and string keys, single-quoted strings with the
escapes ``\\\\`` and ``\\'``, integers, floats, ``true``/``false``/``NULL`` in any case, and
the ``' . "\\0" . '`` var_export writes for a NUL byte); anything else (code, objects,
``__set_state``, heredocs, calls, concatenation of anything else) refuses the file.

The import is planned whole before anything is written (:func:`plan`): every file read
(regular files only, at most :data:`MAX_FILE_BYTES` each, :data:`MAX_FILES` in all),
parsed, mapped to hostctl's fields (:data:`SERVER_MAP`, :data:`PLATFORM_MAP`,
:data:`SITE_MAP`), each value checked as ``provision-save`` checks it, references resolved
(to a context of the import or of the store, of the right type), host names checked
against every other site's. One refused file refuses the import: :class:`Refused` lists
each file and why. :func:`apply` then saves servers, platforms and sites, in that order,
through the store (which validates each save again under its lock).
"""

from __future__ import annotations

import math
import os
import pwd
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias
from urllib.parse import unquote_plus

from hostctl.contexts.names import MAX_LENGTH, display, is_valid, shown
from hostctl.contexts.schema import NULL, TYPES, ContextType, Kind, Value
from hostctl.contexts.store import Context, ContextStore, host_names
from hostctl.errors import InvalidInput, MalformedFile, NotFound

SUFFIX = ".alias.drushrc.php"
MAX_FILE_BYTES = 1 << 20
MAX_FILES = 10_000
MAX_DEPTH = 16
AEGIR_USER = "aegir"
SECRET_MASK = "********"

PhpArray: TypeAlias = "dict[int | str, PhpValue]"
PhpValue: TypeAlias = "str | int | float | bool | None | PhpArray"


class PhpSyntax(ValueError):
    """The text is not var_export's output (the message says where and why)."""


class Refused(InvalidInput):
    """One or more alias files refused: nothing was imported. ``problems`` holds one
    (file, reason) per refusal."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        n = len(self.problems)
        super().__init__(f"{n} alias file{'s' if n != 1 else ''} refused; nothing imported")


# -- the parser ---------------------------------------------------------------------------

_WS = " \t\r\n"
_INT = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|INF|NAN)")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUL = ' . "\\0" . \''  # var_export's way of writing a NUL byte inside a string
_INT_MIN = "-9223372036854775807-1"  # and of writing PHP_INT_MIN
_HEAD = re.compile(r"<\?php[ \t\r\n]")
_ASSIGN = re.compile(r"\$aliases\[")


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> PhpSyntax:
        line = self.text.count("\n", 0, self.pos) + 1
        return PhpSyntax(f"line {line}: {why}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WS:
            self.pos += 1

    def expect(self, token: str) -> None:
        self.skip()
        if not self.text.startswith(token, self.pos):
            raise self.fail(f"expected {token!r}, found {self._near()}")
        self.pos += len(token)

    def _near(self) -> str:
        bit = self.text[self.pos:self.pos + 20]
        return repr(bit) if bit else "the end"

    def value(self, depth: int) -> PhpValue:
        self.skip()
        text, pos = self.text, self.pos
        if text.startswith("'", pos):
            return self.string()
        if text.startswith("array", pos) and not _ident_char(text, pos + 5):
            if depth >= MAX_DEPTH:
                raise self.fail(f"arrays nested deeper than {MAX_DEPTH}")
            self.pos += 5
            return self.array(depth + 1)
        if text.startswith(_INT_MIN, pos) and not _ident_char(text, pos + len(_INT_MIN)):
            self.pos += len(_INT_MIN)
            return -(2**63)
        number = _NUMBER.match(text, pos)
        if number and not _ident_char(text, number.end()):
            self.pos = number.end()
            raw = number.group()
            if _INT.fullmatch(raw):
                return int(raw)
            return float(raw.replace("INF", "inf").replace("NAN", "nan"))
        word = _WORD.match(text, pos)
        if word:
            low = word.group().lower()
            after = text[word.end():word.end() + 1]
            if low in ("true", "false", "null") and after not in ("(", ":", "\\"):
                self.pos = word.end()
                return None if low == "null" else low == "true"
            raise self.fail(f"{shown(word.group())} is not a value var_export writes")
        raise self.fail(f"expected a value, found {self._near()}")

    def string(self) -> str:
        text = self.text
        out: list[str] = []
        i = self.pos + 1
        start = i
        while True:
            if i >= len(text):
                raise self.fail("a string is not closed")
            ch = text[i]
            if ch == "\\":
                nxt = text[i + 1:i + 2]
                if nxt not in ("\\", "'"):
                    # var_export escapes every backslash: a lone one is not its output
                    raise self.fail("a backslash that var_export would have escaped")
                out.append(text[start:i])
                out.append(nxt)
                i += 2
                start = i
            elif ch == "'":
                out.append(text[start:i])
                # ' . "\0" . ' continues the string with a NUL byte
                if text.startswith("'" + _NUL, i):
                    out.append("\0")
                    i += 1 + len(_NUL)
                    start = i
                    continue
                self.pos = i + 1
                return "".join(out)
            else:
                i += 1

    def array(self, depth: int) -> PhpArray:
        self.expect("(")
        out: PhpArray = {}
        while True:
            self.skip()
            if self.text.startswith(")", self.pos):
                self.pos += 1
                return out
            key = self.key()
            if key in out:
                raise self.fail(f"the key {key!r} is given twice")
            self.expect("=>")
            out[key] = self.value(depth)
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith(")", self.pos):
                raise self.fail(f"expected ',' or ')', found {self._near()}")

    def key(self) -> int | str:
        self.skip()
        if self.text.startswith("'", self.pos):
            return self.string()
        found = _INT.match(self.text, self.pos)
        if found and not _ident_char(self.text, found.end()) \
                and self.text[found.end():found.end() + 1] != ".":
            self.pos = found.end()
            return int(found.group())
        raise self.fail(f"expected a key (a string or an integer), found {self._near()}")


def _ident_char(text: str, pos: int) -> bool:
    return pos < len(text) and (text[pos].isalnum() or text[pos] in "_\\.(")


def parse_export(text: str) -> PhpValue:
    """One value as PHP's ``var_export()`` writes it (PhpSyntax if it is anything else)."""
    reader = _Reader(text)
    value = reader.value(0)
    reader.skip()
    if reader.pos != len(text):
        raise reader.fail(f"unexpected {reader._near()} after the value")
    return value


def parse_alias_file(text: str) -> list[tuple[str, PhpValue]]:
    """The ``$aliases['NAME'] = VALUE;`` assignments of an alias file, in order: ``<?php``
    and white space around them, nothing else (PhpSyntax)."""
    head = _HEAD.match(text)
    if not head:
        raise PhpSyntax("line 1: the file does not start with '<?php' and white space")
    reader = _Reader(text)
    reader.pos = head.end()
    found: list[tuple[str, PhpValue]] = []
    while True:
        reader.skip()
        if reader.pos == len(text):
            break
        if not _ASSIGN.match(text, reader.pos):
            raise reader.fail(f"expected $aliases['NAME'] = ..., found {reader._near()}")
        reader.pos += len("$aliases[")
        if not text.startswith("'", reader.pos):
            raise reader.fail("the alias name is not a quoted string")
        name = reader.string()
        reader.expect("]")
        reader.expect("=")
        value = reader.value(0)
        reader.expect(";")
        found.append((name, value))
    if not found:
        raise PhpSyntax("no $aliases['NAME'] = ...; in the file")
    return found


# -- reading the files --------------------------------------------------------------------


def default_folder() -> Path:
    """``.drush`` in the home of the ``aegir`` user (InvalidInput when there is none)."""
    try:
        home = pwd.getpwnam(AEGIR_USER).pw_dir
    except KeyError:
        raise InvalidInput(f"there is no user {AEGIR_USER} here: give the folder that "
                           "holds Aegir's alias files (its back end user's ~/.drush)") from None
    folder = Path(home) / ".drush"
    if not folder.is_dir():
        raise NotFound(f"{folder} is not a folder: give the folder that holds Aegir's "
                       "alias files")
    return folder


def alias_files(path: Path) -> list[Path]:
    """The alias files to read: ``path`` itself, or the ``*.alias.drushrc.php`` of a folder
    (sorted)."""
    try:
        st = os.stat(path)  # a link to the folder is the folder; files are read unfollowed
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        if not path.name.endswith(SUFFIX):
            raise InvalidInput(f"{path} is not an alias file (NAME{SUFFIX})")
        return [path]
    try:
        names = sorted(n for n in os.listdir(path) if n.endswith(SUFFIX))
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    if not names:
        raise InvalidInput(f"{path} holds no *{SUFFIX} file")
    if len(names) > MAX_FILES:
        raise InvalidInput(f"{path} holds {len(names)} alias files, more than {MAX_FILES}")
    return [path / n for n in names]


def read_text(path: Path) -> str:
    """A regular file's text (UTF-8), at most MAX_FILE_BYTES; never through a symbolic
    link, never blocking on a FIFO (MalformedFile says why)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "a symbolic link" if os.path.islink(path) else exc.strerror
        raise MalformedFile(f"cannot read it: {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MalformedFile("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise MalformedFile(f"larger than {MAX_FILE_BYTES} bytes")
        data = os.read(fd, MAX_FILE_BYTES + 1)
        while len(data) <= MAX_FILE_BYTES:
            more = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
            if not more:
                break
            data += more
    except OSError as exc:
        raise MalformedFile(f"cannot read it: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise MalformedFile(f"larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedFile("not UTF-8 text") from None


# -- the mapping --------------------------------------------------------------------------

#: what a field's value becomes: a hostctl field (the value checked by its kind), or a
#: reason it has no equivalent
@dataclass(frozen=True)
class Rule:
    field: str = ""  # the hostctl field; "" for a dropped one
    reason: str = ""  # why it is dropped (or how it is mapped, for the docs)
    convert: Callable[[PhpValue], PhpValue] | None = None


def _same(name: str) -> Rule:
    return Rule(name)


def _drop(reason: str) -> Rule:
    return Rule("", reason)


_GENERATED = "a folder of Aegir's generated configuration; hostctl writes its own"
_NGINX = "an option of Aegir's nginx templates; hostctl writes its own vhosts"
_CLUSTER = "Aegir's cluster and pack web services have no equivalent"
_DERIVED = "derived by Aegir from the platform; hostctl derives it the same way"

HTTP_TYPES = {"nginx": "nginx", "nginx_ssl": "nginx", "apache": "apache",
              "apache_ssl": "apache", "none": "none"}


def _service(choices: Mapping[str, str]) -> Callable[[PhpValue], PhpValue]:
    def convert(value: PhpValue) -> PhpValue:
        if not isinstance(value, str):
            return value
        return choices.get(value.lower(), value)
    return convert


def _ssl(value: PhpValue) -> PhpValue:
    # Aegir: 0 disabled, 1 enabled, 2 required (HTTP redirected to HTTPS)
    if isinstance(value, int | str) and str(value).strip() in ("1", "2"):
        return True
    return value


SERVER_MAP: Mapping[str, Rule] = {
    "remote_host": _same("remote_host"),
    "ip_addresses": _same("ip_addresses"),
    "http_service_type": Rule("http_service_type", "nginx_ssl becomes nginx, apache_ssl "
                              "apache, NONE none", _service(HTTP_TYPES)),
    "http_port": _same("http_port"),
    "http_ssl_port": _same("http_ssl_port"),
    "http_restart_cmd": _same("http_restart_cmd"),
    "web_group": _same("web_group"),
    "db_service_type": Rule("db_service_type", "NONE becomes none",
                            _service({"none": "none"})),
    "db_port": _same("db_port"),
    "master_db": Rule("db_user", "split into db_user, db_passwd (secret), db_host and "
                      "db_port"),
    "master_url": _same("master_url"),
    "admin_email": _same("admin_email"),
    "script_user": _same("script_user"),
    "aegir_root": _same("aegir_root"),
    "backup_path": _same("backup_path"),
    "include_path": _same("include_path"),
    "clients_path": _same("clients_path"),
    "web_disable_url": _same("web_disable_url"),
    "web_maintenance_url": _same("web_maintenance_url"),
    "server": _drop("a server's own server is always @server_master in Aegir"),
    "config_path": _drop(_GENERATED + " (HOME/config/SERVER); Aegir's vhosts there would "
                         "sit beside hostctl's"),
    **{key: _drop(_GENERATED) for key in (
        "http_app_path", "http_pred_path", "http_postd_path", "http_platformd_path",
        "http_vhostd_path", "http_subdird_path", "http_platforms_path")},
    **{key: _drop(_NGINX) for key in (
        "nginx_config_mode", "nginx_is_modern", "nginx_has_etag", "nginx_has_http2",
        "nginx_has_gzip", "nginx_has_upload_progress", "provision_db_cloaking",
        "phpfpm_mode", "subdirs_support", "satellite_mode")},
    **{key: _drop(_CLUSTER) for key in (
        "cluster_web_servers", "slave_web_servers", "master_web_servers")},
    "db_grant_all_hosts": _drop("no equivalent: hostctl decides where a site's database "
                                "user may connect from"),
    "utf8mb4_is_supported": _drop("detected by Aegir when it saves; hostctl needs no such "
                                  "flag"),
}

PLATFORM_MAP: Mapping[str, Rule] = {
    "root": _same("root"),
    "web_server": _same("web_server"),
    "server": _same("server"),
    "makefile": _same("makefile"),
    "make_working_copy": _same("make_working_copy"),
}

SITE_MAP: Mapping[str, Rule] = {
    "uri": _same("uri"),
    "platform": _same("platform"),
    "db_server": _same("db_server"),
    "server": _same("server"),
    "aliases": _same("aliases"),
    "redirection": Rule("redirection", "FALSE: no redirection; the uri itself (or TRUE): "
                        "redirect the aliases to it; an alias: dropped (hostctl redirects "
                        "to the uri only)"),
    "profile": _same("profile"),
    "install_method": _same("install_method"),
    "language": _same("language"),
    "site_enabled": _same("site_enabled"),
    "client_name": _same("client_name"),
    "cron_key": _same("cron_key"),
    "drush_aliases": _same("drush_aliases"),
    "ssl_enabled": Rule("ssl_enabled", "0 becomes false; 1 and 2 (required) true", _ssl),
    "ssl_key": _same("ssl_key"),
    "root": _drop(_DERIVED + " (its root)"),
    "site_path": _drop(_DERIVED + " (ROOT/sites/URI)"),
    "ip_addresses": _drop("hostctl's vhosts listen on the web server's ip_addresses"),
}

MAPS: Mapping[str, Mapping[str, Rule]] = {
    "server": SERVER_MAP, "platform": PLATFORM_MAP, "site": SITE_MAP}
UNKNOWN = "no equivalent in hostctl"


@dataclass(frozen=True)
class Dropped:
    key: str  # Aegir's field
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"aegir": self.key, "reason": self.reason}


@dataclass(frozen=True)
class MappedField:
    key: str  # Aegir's field
    field: str  # hostctl's
    value: Value
    secret: bool

    def shown_value(self) -> Value:
        return SECRET_MASK if self.secret and self.value else self.value

    def to_json(self) -> dict[str, object]:
        return {"aegir": self.key, "field": self.field, "value": self.shown_value()}


@dataclass(frozen=True)
class Entry:
    """One context as the import makes it, and what it does with it."""

    name: str  # bare
    type: str
    source: str  # the file it comes from
    mapped: tuple[MappedField, ...]
    dropped: tuple[Dropped, ...]
    renamed_from: str = ""  # Aegir's name, when it is not hostctl's
    action: str = "saved"  # saved (new), updated, unchanged, skipped
    changes: tuple[str, ...] = ()  # the fields a save changes
    note: str = ""

    @property
    def values(self) -> dict[str, Value]:
        return {m.field: m.value for m in self.mapped}

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "name": display(self.name), "type": self.type, "file": self.source,
            "action": self.action, "changed": list(self.changes),
            "mapped": [m.to_json() for m in self.mapped],
            "dropped": [d.to_json() for d in self.dropped]}
        if self.renamed_from:
            doc["aegir_name"] = display(self.renamed_from)
        if self.note:
            doc["note"] = self.note
        return doc


@dataclass(frozen=True)
class Plan:
    entries: tuple[Entry, ...]
    files: int

    def to_json(self, *, dry_run: bool) -> dict[str, object]:
        counts = {a: sum(1 for e in self.entries if e.action == a)
                  for a in ("saved", "updated", "unchanged", "skipped")}
        return {"dry_run": dry_run, "files": self.files, "counts": counts,
                "contexts": [e.to_json() for e in self.entries]}


def to_arg(value: Value) -> str:
    """A value as provision-save takes it on its command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def _scalar(value: PhpValue) -> str:
    """A PHP scalar as the string provision-save would have been given."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise InvalidInput(f"{value!r} is not a whole number")
        return str(int(value))
    if isinstance(value, int | str):
        return str(value)
    raise InvalidInput("an array where a single value belongs")


def _strings(value: PhpValue) -> str:
    """A list field's value (an array of strings, or Aegir's comma-separated string)."""
    if isinstance(value, dict):
        items = [_scalar(v) for v in value.values()]
        if any("," in item for item in items):
            raise InvalidInput("an item holds a ','")
        return ",".join(items)
    return _scalar(value)


def _convert(schema: ContextType, field_name: str, value: PhpValue) -> Value:
    """Aegir's value for a field, checked as provision-save checks it (InvalidInput
    naming the field; a secret's value never shown)."""
    spec = schema.fields[field_name]
    try:
        if spec.kind is Kind.REF and isinstance(value, str):
            value = display(_name(value.strip()))  # renamed as the context it names is
        raw = _strings(value) if spec.kind in (Kind.LIST, Kind.HOSTS, Kind.IPS) \
            else _scalar(value)
        if raw == NULL:
            raise InvalidInput("'null' would reset it")
        parsed = spec.parse(raw)
        if spec.parse(to_arg(parsed)) != parsed:
            raise InvalidInput("its value would not be saved as it is")
        return parsed
    except InvalidInput as exc:
        if spec.secret:
            raise InvalidInput(f"--{field_name}: the value (secret, not shown) is not "
                               "acceptable: control characters or an array") from None
        text = str(exc)
        raise InvalidInput(text if text.startswith("--") else f"--{field_name}: {text}") \
            from None


_MASTER_DB = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<user>[^:@/]*)"
                        r"(?::(?P<passwd>.*))?@(?P<host>[^@/:]*)(?::(?P<port>[0-9]+))?"
                        r"(?:/(?P<path>[^@]*))?", re.DOTALL)


def _master_db(value: PhpValue, schema: ContextType, out: list[MappedField],
               dropped: list[Dropped], has_port: bool) -> None:
    """``mysql://USER:PASS@HOST[:PORT]`` (USER and PASS url-encoded) as the db_ fields.
    Nothing of it is ever put in a message: it holds the password."""
    found = _MASTER_DB.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise InvalidInput("master_db (not shown: it holds a password) is not a "
                           "mysql://USER:PASSWORD@HOST URL")
    user = unquote_plus(found.group("user"))
    passwd = unquote_plus(found.group("passwd") or "")
    parts = [("db_user", user), ("db_passwd", passwd), ("db_host", found.group("host"))]
    if found.group("port") and not has_port:
        parts.append(("db_port", found.group("port")))
    for name, raw in parts:
        if raw:
            out.append(MappedField("master_db", name, _convert(schema, name, raw),
                                   schema.fields[name].secret))
    if found.group("path"):
        dropped.append(Dropped("master_db", "its database name: hostctl connects to the "
                                            "server's default"))


def map_context(aegir_name: str, doc: PhpValue) -> Entry:
    """One alias's array as a hostctl context (InvalidInput saying why it cannot be)."""
    if not isinstance(doc, dict):
        raise InvalidInput("the alias is not an array")
    name = _name(aegir_name)
    type_name = doc.get("context_type")
    if not isinstance(type_name, str) or type_name not in MAPS:
        raise InvalidInput(f"context_type {shown(str(type_name))} is not server, platform "
                           "or site")
    schema = TYPES[type_name]
    rules = MAPS[type_name]
    mapped: list[MappedField] = []
    dropped: list[Dropped] = []
    for key, value in doc.items():
        key_text = str(key)
        if key_text == "context_type":
            continue
        rule = rules.get(key_text) if isinstance(key, str) else None
        if rule is None:
            dropped.append(Dropped(shown(key_text, 80).strip("'"), UNKNOWN))
            continue
        if not rule.field:
            dropped.append(Dropped(key_text, rule.reason))
            continue
        if value is None or (value == "" and key_text in ("master_db", "redirection")):
            dropped.append(Dropped(key_text, "NULL (not set) in Aegir: hostctl's default"))
            continue
        if key_text == "master_db":
            _master_db(value, schema, mapped, dropped, "db_port" in doc)
            continue
        if rule.convert is not None:
            value = rule.convert(value)
        if key_text == "redirection":
            value = _redirection(value, doc, dropped)
            if value is None:
                continue
        if key_text == "http_service_type" and isinstance(value, str) \
                and value not in schema.fields["http_service_type"].choices:
            dropped.append(Dropped(key_text, f"{shown(value)}: " + (
                _CLUSTER if value in ("cluster", "pack") else "no equivalent web server")))
            continue
        spec = schema.fields[rule.field]
        mapped.append(MappedField(key_text, rule.field, _convert(schema, rule.field, value),
                                  spec.secret))
    entry = Entry(name, type_name, "", tuple(mapped), tuple(dropped),
                  renamed_from=aegir_name if aegir_name != name else "")
    missing = [f.name for f in schema.fields.values() if f.required and f.name not in
               entry.values]
    if missing:
        raise InvalidInput(f"a {type_name} needs {', '.join(missing)}, which it lacks")
    return entry


def _redirection(value: PhpValue, doc: Mapping[int | str, PhpValue],
                 dropped: list[Dropped]) -> PhpValue:
    """Aegir's redirection: FALSE, or the name the aliases redirect to."""
    if isinstance(value, bool) or value in (0, 1, "0", "1"):
        return value
    uri = doc.get("uri")
    if isinstance(value, str) and isinstance(uri, str) and value.lower() == uri.lower():
        return True
    dropped.append(Dropped("redirection", f"to {shown(str(value))}, not the uri: hostctl "
                                          "redirects the aliases to the uri only"))
    return None


def _name(aegir_name: str) -> str:
    """hostctl's name for an Aegir context: the same, lower-cased (Aegir lower-cases a
    site's name; a context name in hostctl is lower case); anything else that hostctl
    cannot hold is refused."""
    bare = aegir_name[1:] if aegir_name.startswith("@") else aegir_name
    if is_valid(bare):
        return bare
    low = bare.lower()
    if low != bare and low.isascii() and is_valid(low):
        return low
    if len(bare) > MAX_LENGTH:
        why = f"longer than {MAX_LENGTH} characters"
    elif ".." in bare:
        why = "'..' is not allowed"
    else:
        why = "use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit"
    raise InvalidInput(f"the name {shown(aegir_name)} cannot be a hostctl context: {why}")


# -- the plan -----------------------------------------------------------------------------

RANK = {name: n for n, name in enumerate(TYPES)}  # servers, then platforms, then sites


def read_entries(files: Iterable[Path]) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Each file read, parsed and mapped: its entries, and (file, reason) for each refused
    one."""
    entries: list[Entry] = []
    problems: list[tuple[str, str]] = []
    for path in files:
        try:
            text = read_text(path)
            aliases = parse_alias_file(text)
        except (MalformedFile, PhpSyntax) as exc:
            problems.append((str(path), str(exc)))
            continue
        stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
        if len(aliases) != 1:
            problems.append((str(path), f"{len(aliases)} aliases in one file; provision "
                                        "writes one"))
            continue
        aegir_name, doc = aliases[0]
        if aegir_name != stem:
            problems.append((str(path), f"it holds the alias {shown(aegir_name)}, not "
                                        f"{shown(stem)} as its name says"))
            continue
        try:
            entry = map_context(aegir_name, doc)
        except InvalidInput as exc:
            problems.append((str(path), str(exc)))
            continue
        entries.append(Entry(entry.name, entry.type, str(path), entry.mapped, entry.dropped,
                             entry.renamed_from))
    return entries, problems


def plan(files: Iterable[Path], store: ContextStore) -> Plan:
    """Everything the import would do, checked whole against the store; Refused (every
    file and why) if any file cannot be imported."""
    files = list(files)
    entries, problems = read_entries(files)
    entries = _skip_drush_aliases(entries)
    by_name: dict[str, Entry] = {}
    for entry in entries:
        other = by_name.get(entry.name)
        if other is not None:
            problems.append((entry.source, f"{display(entry.name)} is also in "
                                           f"{other.source}"))
            continue
        by_name[entry.name] = entry
    problems.extend(_check(by_name, store))
    if problems:
        raise Refused(problems)
    planned = [_action(e, store) if e.action != "skipped" else e for e in by_name.values()]
    planned.sort(key=lambda e: (RANK[e.type], e.name))
    return Plan(tuple(planned), len(files))


def _skip_drush_aliases(entries: list[Entry]) -> list[Entry]:
    """A site's drush_aliases are copies of its alias under other names (``@hm`` for
    ``@hostmaster``): the site is imported once, the copies are skipped."""
    copies: dict[str, Entry] = {}
    for e in entries:
        extra = e.values.get("drush_aliases")
        if e.type == "site" and isinstance(extra, list):
            for alias in extra:
                copies[alias.removeprefix("@").lower()] = e
    out = []
    for e in entries:
        owner = copies.get(e.name)
        if owner is not None and owner.name != e.name and e.type == "site" \
                and owner.values.get("uri") == e.values.get("uri"):
            out.append(Entry(e.name, e.type, e.source, e.mapped, e.dropped, e.renamed_from,
                             action="skipped",
                             note=f"a drush alias of {display(owner.name)} (its drush_aliases)"))
        else:
            out.append(e)
    return out


def _check(by_name: Mapping[str, Entry], store: ContextStore) -> list[tuple[str, str]]:
    """References, types and host names, as a save checks them, against the store and
    the rest of the import."""
    problems: list[tuple[str, str]] = []
    live = {n: e for n, e in by_name.items() if e.action != "skipped"}
    existing: dict[str, Context] = {}
    for name, entry in live.items():
        try:
            here = store.get(name) if store.exists(name) else None
        except (NotFound, MalformedFile) as exc:
            problems.append((entry.source, str(exc)))
            continue
        if here is None:
            continue
        if here.type != entry.type:
            problems.append((entry.source, f"{display(name)} is a {here.type} in hostctl, "
                                           f"not a {entry.type}: delete one first"))
            continue
        existing[name] = here
    for name, entry in live.items():
        schema = TYPES[entry.type]
        for spec in schema.references():
            target = entry.values.get(spec.name)
            if not isinstance(target, str):
                continue
            bare = target.removeprefix("@")
            if bare == name:
                problems.append((entry.source, f"{spec.name}: it refers to itself"))
                continue
            kind = live[bare].type if bare in live else None
            if kind is None:
                try:
                    kind = store.get(bare).type if store.exists(bare) else None
                except (NotFound, MalformedFile) as exc:
                    problems.append((entry.source, f"{spec.name}: {exc}"))
                    continue
            if kind is None:
                problems.append((entry.source, f"{spec.name}: no context {target} in the "
                                               "import or in hostctl"))
            elif kind != spec.ref_type:
                problems.append((entry.source, f"{spec.name}: {target} is a {kind}, not a "
                                               f"{spec.ref_type}"))
    problems.extend(_check_hosts(live, existing, store))
    return problems


def _check_hosts(live: Mapping[str, Entry], existing: Mapping[str, Context],
                 store: ContextStore) -> list[tuple[str, str]]:
    """No two sites share a host name: the imported ones (merged into what hostctl has of
    them) with each other and with hostctl's other sites."""
    site = TYPES["site"]
    claims: dict[str, str] = {}  # host name -> the site that has it
    for ctx in store.of_type("site"):
        if ctx.name not in live:
            for host in host_names(ctx.name, site, ctx.values):
                claims[host] = ctx.name
    problems: list[tuple[str, str]] = []
    for name, entry in sorted(live.items()):
        if entry.type != "site":
            continue
        values = {**(existing[name].values if name in existing else {}), **entry.values}
        uri = values.get("uri", name)
        aliases = values.get("aliases") or []
        if "uri" not in values:
            try:
                site.fields["uri"].parse(name)
            except InvalidInput:
                problems.append((entry.source, f"the site's name {name} is not a host "
                                               "name and it has no uri"))
                continue
        if isinstance(aliases, list) and str(uri).lower() in (a.lower() for a in aliases):
            problems.append((entry.source, f"aliases: {uri} is the site's own uri"))
            continue
        for host in sorted(host_names(name, site, values)):
            owner = claims.get(host)
            if owner is not None and owner != name:
                problems.append((entry.source, f"the host name {host} is taken by "
                                               f"{display(owner)}"))
                break
            claims[host] = name
    return problems


def _action(entry: Entry, store: ContextStore) -> Entry:
    """The entry with what a save would do: create it, change some fields, or nothing."""
    here = store.get(entry.name) if store.exists(entry.name) else None
    if here is None:
        return _with(entry, "saved", tuple(m.field for m in entry.mapped))
    changes = tuple(m.field for m in entry.mapped if here.values.get(m.field) != m.value)
    return _with(entry, "updated" if changes else "unchanged", changes)


def _with(entry: Entry, action: str, changes: tuple[str, ...]) -> Entry:
    return Entry(entry.name, entry.type, entry.source, entry.mapped, entry.dropped,
                 entry.renamed_from, action, changes, entry.note)


def apply(done: Plan, store: ContextStore) -> None:
    """Save what the plan says, servers first, then platforms, then sites; each save is
    validated again by the store, under its lock."""
    for entry in done.entries:
        if entry.action not in ("saved", "updated"):
            continue
        values = entry.values
        store.save(entry.name, {f: to_arg(values[f]) for f in entry.changes}, entry.type)
