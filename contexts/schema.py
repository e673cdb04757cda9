"""Typed schemas for the three context types: server, platform, site.

Each field has a kind that says how a command-line string becomes a stored value, and how a
stored value is checked when a file is read back:

    str     any text without control characters
    int     a whole number in ASCII digits, with a range (ports are 1-65535)
    bool    true/false, yes/no, on/off, 1/0 (any case)
    list    comma-separated; blanks dropped, duplicates removed, order kept
    choice  one of a fixed set of words
    path    an absolute path, normalised; no '..' (refused, not resolved: a symbolic link
            before it would make it mean another folder), no quote, backslash or '$'
    host    a host name in ASCII (letters, lower-cased; digits, '.', '-'; IDNA as xn--
            labels that must decode), labels of at most 63 characters, at most 253 in
            all, no trailing dot, no wildcard (it would claim other sites' names), no port
    hosts   a list of host names (comma-separated)
    endpoint  a host name, or an absolute path (the folder of a server's UNIX socket)
    ips     a list of IP addresses (v4 or v6, written as ipaddress writes them)
    email   an e-mail address: LOCAL@HOST, LOCAL of the characters RFC 5322 allows
            unquoted, HOST a host name
    url     an http(s) URL without white space, quotes, backslashes or control characters
    word    a name such as a language code, a profile or a UNIX user: letters, digits,
            '.', '_', '-', '+' and '@'
    command a command line, split into words as a shell splits it (never run by one):
            it must split (quotes closed) into at least one word
    location  an absolute path or an http(s) URL
    ref     the name of another context of a given type

Each value is checked when it is saved (provision-save, a task's context options, a
front end's drop), so that what is saved can always be acted on: a path holds none of the
characters nginx would read as syntax (quotes, backslashes, '$'), a host name could be an
nginx server_name. A value saved before a rule existed is read back as it was (the file is
not malformed); :meth:`Field.validate` names what is wrong with it, and a task on such
a context fails saying which field.

The string ``null`` resets a field to its default (Aegir's convention). Fields follow
Aegir's provision contexts; secret fields are never shown unless asked for.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from hostctl.config import FieldNames
from hostctl.contexts.names import display, parse_name, shown
from hostctl.errors import InvalidInput, UnknownField

Value = str | int | bool | list[str]

NULL = "null"
#: the words a boolean takes (any case)
TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "n"})
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                    r"@(.+)")
#: an http(s) URL as a field holds it (no white space, quotes, backslashes, $ or braces:
#: a web server's configuration quotes it, and it must stay one string there)
URL_FORM = re.compile(r"https?://[A-Za-z0-9._~:/?#\[\]@!&'()*+,;=%-]+")
_WORD = re.compile(r"[A-Za-z0-9._+@-]+")
#: what nginx would read in a path as the end of a string, an escape or a variable
_UNSAFE_PATH = re.compile(r'["\\$]')


class Kind(Enum):
    STR = "str"
    INT = "int"
    BOOL = "bool"
    LIST = "list"
    CHOICE = "choice"
    PATH = "path"
    HOST = "host"
    HOSTS = "hosts"
    ENDPOINT = "endpoint"
    IPS = "ips"
    EMAIL = "email"
    URL = "url"
    WORD = "word"
    COMMAND = "command"
    LOCATION = "location"
    REF = "ref"


Default = Value | None | Callable[[str], Value | None]


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    help: str
    default: Default = None
    required: bool = False
    secret: bool = False
    choices: tuple[str, ...] = ()
    ref_type: str = ""
    minimum: int | None = None
    maximum: int | None = None

    def default_for(self, context_name: str) -> Value | None:
        d = self.default
        value = d(context_name) if callable(d) else d
        return list(value) if isinstance(value, list) else value

    def parse(self, raw: str) -> Value:
        """Turn a command-line string into a value of this field's kind."""
        try:
            return self._parse(raw)
        except InvalidInput as exc:
            raise InvalidInput(f"--{self.name}: {exc}") from None

    def _parse(self, raw: str) -> Value:
        if self.kind is Kind.BOOL:
            low = raw.strip().lower()
            if low in TRUE_WORDS:
                return True
            if low in FALSE_WORDS:
                return False
            raise InvalidInput(f"{shown(raw)} is not a boolean (use true or false)")
        if self.kind is Kind.INT:
            # int() alone would also take '8_0' and digits of other scripts ('٣' is 3)
            if not _INT.fullmatch(raw.strip()):
                raise InvalidInput(f"{shown(raw)} is not a whole number")
            return self._check_int(int(raw.strip(), 10))
        if self.kind in _LISTS:
            items: list[str] = []
            for part in raw.split(","):
                item = self._item(part.strip())
                if item and item not in items:
                    items.append(item)
            return items
        if self.kind is Kind.REF:
            return display(parse_name(raw.strip()))
        # free text is kept as typed (a password may end in a space); the rest is trimmed
        return self._scalar(raw if self.kind is Kind.STR else raw.strip())

    def check(self, value: object) -> Value:
        """Check a value read from a file; raise InvalidInput (the file is malformed) if it
        is what no save ever wrote: another type (a boolean, a number, a string, a list of
        strings), a number out of its range, a word not among the choices, a control
        character. The rules of host names, paths, addresses and the other kinds are not
        applied here: a value saved before such a rule existed is still read (``context
        show`` works), and :meth:`validate` says what is wrong with it."""
        if self.kind is Kind.BOOL:
            if isinstance(value, bool):
                return value
            raise InvalidInput("not a boolean")
        if self.kind is Kind.INT:
            if isinstance(value, int) and not isinstance(value, bool):
                return self._check_int(value)
            raise InvalidInput("not a whole number")
        if self.kind in _LISTS:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return [_check_text(v) for v in value]
            raise InvalidInput("not a list of strings")
        if not isinstance(value, str):
            raise InvalidInput("not a string")
        if self.kind is Kind.REF:
            return display(parse_name(value))
        if self.kind is Kind.CHOICE and value not in self.choices:
            raise InvalidInput(f"{shown(value)} is not one of {', '.join(self.choices)}")
        return _check_text(value)

    def validate(self, value: Value) -> None:
        """Raise InvalidInput (naming the field) if a stored value breaks a rule of its
        kind that a save applies: a value saved before the rule existed."""
        try:
            if self.kind is Kind.INT and isinstance(value, int):
                self._check_int(value)
            elif self.kind in _LISTS and isinstance(value, list):
                for item in value:
                    self._item(item.strip())
            elif isinstance(value, str) and self.kind is not Kind.REF:
                self._scalar(value)
        except InvalidInput as exc:
            raise InvalidInput(f"field {self.name}: {exc}") from None

    def _check_int(self, number: int) -> int:
        if self.minimum is not None and number < self.minimum:
            raise InvalidInput(f"{number} is below {self.minimum}")
        if self.maximum is not None and number > self.maximum:
            raise InvalidInput(f"{number} is above {self.maximum}")
        return number

    def _item(self, text: str) -> str:
        """One item of a list kind, trimmed; '' (a blank between commas) is dropped."""
        text = _check_text(text)
        if not text or self.kind is Kind.LIST:
            return text
        return _host(text) if self.kind is Kind.HOSTS else _ip(text)

    def _scalar(self, text: str) -> str:
        """A string value by the rules of its kind, in the one spelling that is stored."""
        text = _check_text(text)
        kind = self.kind
        if kind is Kind.CHOICE:
            if text not in self.choices:
                raise InvalidInput(f"{shown(text)} is not one of {', '.join(self.choices)}")
            return text
        if kind is Kind.PATH:
            return _path(text)
        if kind is Kind.HOST:
            return _host(text)
        if not text:  # the optional kinds below take '' for "not set"
            return text
        if kind is Kind.ENDPOINT:
            return _path(text) if text.startswith("/") else _host(text)
        if kind is Kind.LOCATION:
            return _path(text) if text.startswith("/") else _url(text)
        if kind is Kind.EMAIL:
            return _email(text)
        if kind is Kind.URL:
            return _url(text)
        if kind is Kind.WORD:
            return _word(text)
        if kind is Kind.COMMAND:
            return _command(text)
        return text


_LISTS = frozenset({Kind.LIST, Kind.HOSTS, Kind.IPS})


def _check_text(text: str) -> str:
    if any(ch in text for ch in "\x00\r\n") or not (text.isprintable() or text == ""):
        raise InvalidInput(f"{shown(text)} contains control characters")
    return text


def _host(text: str) -> str:
    """A host name as a save takes it: ASCII (IDNA names in their xn-- form, which must
    decode), lower-cased, labels of letters, digits and inner '-' of at most 63
    characters, 253 in all. No wildcard ('*.example.com', '.example.com'): a wildcard
    would claim names other sites have."""
    # checked before lower(), which maps some non-ASCII letters to ASCII ones (the Kelvin
    # sign to 'k')
    low = text.lower()
    if not text.isascii() or not _HOST.fullmatch(low) or len(low) > 253:
        raise InvalidInput(f"{shown(text)} is not a host name (letters, digits, '-' and "
                           "'.'; an international name in its xn-- form; no wildcard)")
    for label in low.split("."):
        if label.startswith("xn--"):
            try:
                label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                raise InvalidInput(f"{shown(text)}: {label} is not a valid xn-- "
                                   "(punycode) label") from None
        elif label[2:4] == "--":
            # RFC 5891: '--' in the third and fourth places is reserved for xn--
            raise InvalidInput(f"{shown(text)}: {label} has '--' where only xn-- may")
    return low


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise InvalidInput(f"{shown(text)} is not an absolute path")
    if ".." in text.split("/"):
        # refused, not resolved: '/a/link/..' is not '/a' when link is a symbolic link
        raise InvalidInput(f"{shown(text)} holds '..'")
    if _UNSAFE_PATH.search(text):
        raise InvalidInput(f"{shown(text)} holds a quote, a backslash or a '$', which a "
                           "web server's configuration would misread")
    normal = os.path.normpath(text)
    if normal != normal.strip():
        # '/a /' is '/a ' once normalised, which a save would trim to '/a' when read
        # back: one stored spelling, and none a configuration line would lose
        raise InvalidInput(f"{shown(text)} ends in white space")
    return normal


def _ip(text: str) -> str:
    """An address a web server can listen on: not a multicast one, nor an IPv6
    link-local one (bound only with its interface, which nginx's listen cannot name)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(f"{shown(text)} is not an IP address") from None
    if address.is_multicast:
        raise InvalidInput(f"{shown(text)} is a multicast address: nothing listens on it")
    if address.version == 6 and address.is_link_local:
        raise InvalidInput(f"{shown(text)} is an IPv6 link-local address, which a web "
                           "server can listen on only with its interface")
    return str(address)


def _email(text: str) -> str:
    found = _EMAIL.fullmatch(text)
    if not found or len(text) > 254:
        raise InvalidInput(f"{shown(text)} is not an e-mail address (local@host.name)")
    return text[: found.start(1)] + _host(found.group(1))


def _url(text: str) -> str:
    if not URL_FORM.fullmatch(text):
        raise InvalidInput(f"{shown(text)} is not an http(s) URL without spaces, quotes or "
                           "backslashes")
    return text


def _word(text: str) -> str:
    if not _WORD.fullmatch(text):
        raise InvalidInput(f"{shown(text)} must be letters, digits, '.', '_', '-', '+' or '@'")
    return text


def _command(text: str) -> str:
    # split as its user splits it (nginx.py's reload_argv): what cannot be split, or
    # splits into nothing, could never be run
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise InvalidInput(f"{shown(text)} cannot be split into words: {exc}") from None
    if not words:
        raise InvalidInput(f"{shown(text)} holds no command")
    return text


@dataclass(frozen=True)
class ContextType:
    name: str
    help: str
    fields: Mapping[str, Field] = field(default_factory=dict)

    def field(self, name: str) -> Field:
        key = name.replace("-", "_")
        try:
            return self.fields[key]
        except KeyError:
            raise UnknownField(
                f"unknown field --{name} for a {self.name}; known fields: "
                + ", ".join(sorted(self.fields))
            ) from None

    def references(self) -> list[Field]:
        return [f for f in self.fields.values() if f.kind is Kind.REF]


def _fields(*items: Field) -> dict[str, Field]:
    return {f.name: f for f in items}


def _port(name: str, default: int | None, help: str) -> Field:
    return Field(name, Kind.INT, help, default=default, minimum=1, maximum=65535)


def _protected() -> Field:
    return Field(
        "protected", Kind.BOOL, "refuse dangerous tasks (disable, delete) on it", default=False
    )


SERVER = ContextType(
    "server",
    "a machine that runs services (web, database) for platforms and sites",
    _fields(
        Field("remote_host", Kind.HOST, "host name the server is reached at", default="localhost"),
        Field("ip_addresses", Kind.IPS, "IP addresses of the server (comma-separated)",
              default=[]),
        Field("http_service_type", Kind.CHOICE, "web server", default="none",
              choices=("none", "nginx", "apache")),
        _port("http_port", 80, "port the web server listens on"),
        _port("http_ssl_port", 443, "port for HTTPS"),
        Field("ssl_acme_directory", Kind.URL, "the ACME CA that sites' certificates come "
              "from (its directory URL)",
              default="https://acme-v02.api.letsencrypt.org/directory"),
        Field("ssl_ca_bundle", Kind.PATH, "the CA certificates to trust the ACME CA's own "
              "HTTPS with (unset: the system's)"),
        Field("ssl_renew_days", Kind.INT, "renew a site's certificate when it expires within "
              "this many days", default=30, minimum=1, maximum=3650),
        Field("http_restart_cmd", Kind.COMMAND,
              "command that reloads the web server, split into words as a shell would but "
              "never run by one (unset: nginx -s reload)", default=""),
        Field("nginx_binary", Kind.PATH, "the nginx program (unset: nginx on PATH, else "
              "/usr/sbin/nginx)"),
        Field("nginx_conf", Kind.PATH, "the nginx.conf that includes hostctl's vhost folder, "
              "for nginx -t and the reload (unset: nginx's own default)"),
        Field("web_group", Kind.WORD, "UNIX group the web server runs as", default=""),
        Field("php_service_type", Kind.CHOICE, "PHP for the sites of PHP platforms: each "
              "site's own UNIX user and PHP-FPM pool", default="none",
              choices=("none", "php-fpm")),
        Field("privileged_settings", Kind.PATH, "the privileged helper's settings file, "
              "root's (unset: /etc/hostctl/privileged.toml)"),
        Field("privileged_command", Kind.COMMAND, "the command that runs the privileged "
              "helper, before its settings file and action (unset: this hostctl's "
              "interpreter, isolated, PYTHON -I -m hostctl privileged, through sudo -n "
              "unless the back end is root)", default=""),
        Field("db_service_type", Kind.CHOICE, "database server", default="none",
              choices=("none", "sqlite", "pgsql", "mariadb", "mysql")),
        Field("db_host", Kind.ENDPOINT, "host of the database server, or the folder of its "
              "UNIX socket (unset: the local socket; with db_passwd, localhost)", default=""),
        _port("db_port", None, "port of the database server (unset: the service's default)"),
        Field("db_user", Kind.WORD, "database administrator user", default=""),
        Field("db_passwd", Kind.STR, "database administrator password", default="",
              secret=True),
        Field("master_url", Kind.URL, "URL of the front end", default=""),
        Field("admin_email", Kind.EMAIL, "address for the server's notices", default=""),
        Field("script_user", Kind.WORD, "UNIX user that runs hostctl on the server",
              default=""),
        Field("aegir_root", Kind.PATH, "home folder of the backend user on the server"),
        Field("backup_path", Kind.PATH, "folder for backups (unset: under the home)"),
        Field("config_path", Kind.PATH, "folder for generated service config"),
        Field("include_path", Kind.PATH, "folder for shared config includes"),
        Field("clients_path", Kind.PATH, "folder of per-client links"),
        Field("web_disable_url", Kind.URL, "where a disabled site's visitors are sent",
              default=""),
        Field("web_maintenance_url", Kind.URL, "where visitors go during maintenance",
              default=""),
        _protected(),
    ),
)

PLATFORM = ContextType(
    "platform",
    "an application code base that sites run on",
    _fields(
        Field("root", Kind.PATH, "folder that holds the application", required=True),
        Field("web_server", Kind.REF, "server that serves it", ref_type="server"),
        Field("server", Kind.REF, "server the platform lives on", ref_type="server"),
        Field("makefile", Kind.LOCATION, "makefile or build recipe to create the root (an "
              "absolute path or an http(s) URL)", default=""),
        Field("make_working_copy", Kind.BOOL, "keep version control data when building",
              default=False),
        Field("locked", Kind.BOOL, "a locked platform accepts no new sites", default=False),
        Field("manifest", Kind.PATH, "the application's hostctl-app.toml: its web root and "
              "commands (unset: ROOT/hostctl-app.toml, if there is one)"),
        _protected(),
    ),
)

SITE = ContextType(
    "site",
    "a web site served from a platform",
    _fields(
        Field("uri", Kind.HOST, "the site's address (default: its context name)",
              default=lambda name: name),
        Field("platform", Kind.REF, "platform the site runs on", required=True,
              ref_type="platform"),
        Field("db_server", Kind.REF, "server that holds the site's database",
              ref_type="server"),
        Field("server", Kind.REF, "server the site lives on", ref_type="server"),
        Field("aliases", Kind.HOSTS, "other addresses of the site (comma-separated host "
              "names; no other site may have them)", default=[]),
        Field("redirection", Kind.BOOL, "redirect the aliases to the main address",
              default=False),
        Field("profile", Kind.WORD, "installation profile", default="standard"),
        Field("install_method", Kind.CHOICE, "how the site is installed", default="profile",
              choices=("profile", "manual")),
        Field("language", Kind.WORD, "language code", default="en"),
        Field("site_enabled", Kind.BOOL, "whether the site is served", default=True),
        Field("client_name", Kind.STR, "the client that owns the site", default=""),
        Field("cron_key", Kind.STR, "key for the site's cron URL", default="", secret=True),
        Field("drush_aliases", Kind.LIST, "extra aliases for the site", default=[]),
        Field("ssl_enabled", Kind.BOOL, "serve the site over HTTPS", default=False),
        Field("ssl_key", Kind.WORD, "name of the site's certificate", default=""),
        Field("http_basic_auth_username", Kind.WORD, "user for HTTP basic authentication",
              default=""),
        Field("http_basic_auth_password", Kind.STR, "password for HTTP basic authentication",
              default="", secret=True),
        Field("admin_email", Kind.EMAIL, "address of the site's administrator", default=""),
        _protected(),
    ),
)

TYPES: Mapping[str, ContextType] = {t.name: t for t in (SERVER, PLATFORM, SITE)}


def context_type(name: str) -> ContextType:
    try:
        return TYPES[name]
    except KeyError:
        raise InvalidInput(
            f"unknown context type {shown(name)}; known types: {', '.join(TYPES)}"
        ) from None


def all_field_names() -> list[str]:
    return sorted({f for t in TYPES.values() for f in t.fields})


def secret_field_names() -> frozenset[str]:
    """Fields marked secret in any context type: never shown, never put on a command line."""
    return frozenset(f.name for t in (SERVER, PLATFORM, SITE) for f in t.fields.values()
                     if f.secret)


def field_names() -> FieldNames:
    """What config.toml's checks need to know of the fields (see hostctl.config.load)."""
    return FieldNames(frozenset(all_field_names()), secret_field_names())
