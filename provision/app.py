"""A platform's application manifest, ``hostctl-app.toml``: its web root and the
commands of its own steps. It travels with the code, in the platform root (or where the
platform's ``manifest`` field says)::

    format = 1

    [web]
    root = "{site_path}/public"      # the vhost's document root (default: "{root}")
    index = ["index.html"]           # default: index.html, index.htm

    [commands]                       # each an argv list; all optional
    install = ["php", "{root}/install.php", "--uri={uri}"]
    login_link = ["php", "{root}/login.php", "{uri}"]   # prints the link, last line
    cron = ["php", "{root}/cron.php"]

    [env]                            # added to every command's environment
    APP_ENV = "production"

Placeholders, replaced inside each item (a value never splits into more arguments):
``{name}``, ``{context}``, ``{uri}``, every other non-secret field of the site,
``{root}`` (the platform root), ``{site_path}`` (``ROOT/sites/URI``), ``{docroot}`` (the
web root), ``{task_id}``, and ``{option.KEY}`` where a task takes options. Secrets never
go on a command line; the commands find them in their environment:

    HOSTCTL_FIELD_<FIELD>   every field of the site, and ROOT, SITE_PATH, DOCROOT
    DB_TYPE                 sqlite, pgsql or none
    DB_NAME, DB_USER, DB_PASSWD, DB_HOST, DB_PORT
    DB_PATH                 the SQLite file ("" otherwise)

A command runs in the platform root, its output in the task's log with every secret
redacted; a non-zero exit fails the task (an install then undoes all it did).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hostctl.config import PLACEHOLDER
from hostctl.contexts.schema import SITE, secret_field_names
from hostctl.contexts.store import Context
from hostctl.errors import MalformedFile

MANIFEST = "hostctl-app.toml"
COMMANDS = ("install", "login_link", "cron")
FORMAT = 1
#: the placeholders a manifest may use besides the site's own fields
DERIVED = frozenset({"name", "context", "type", "root", "site_path", "docroot", "task_id"})


@dataclass(frozen=True)
class Manifest:
    path: Path | None = None  # None: the platform has none (the defaults)
    web_root: str = "{root}"
    index: tuple[str, ...] = ("index.html", "index.htm")
    commands: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


def manifest_path(platform: Context) -> tuple[Path, bool]:
    """Where the platform's manifest is, and whether the platform names it explicitly."""
    explicit = platform.get("manifest")
    if isinstance(explicit, str) and explicit:
        return Path(explicit), True
    return Path(str(platform.get("root"))) / MANIFEST, False


def load(platform: Context) -> Manifest:
    """The platform's manifest; the defaults if it has none. A manifest named by the
    platform's ``manifest`` field must exist."""
    path, explicit = manifest_path(platform)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise MalformedFile(
                f"{platform.display_name}: its manifest {path} is missing") from None
        return Manifest()
    except OSError as exc:
        raise MalformedFile(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return _parse(tomllib.loads(raw.decode("utf-8")), path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise MalformedFile(f"malformed {path}: {' '.join(str(exc).split())}") from exc


def _parse(doc: Mapping[str, object], path: Path) -> Manifest:
    _known(doc, {"format", "web", "commands", "env"}, MANIFEST)
    if doc.get("format", FORMAT) != FORMAT:
        raise ValueError(f"unsupported format {doc.get('format')!r} (expected {FORMAT})")
    web = _table(doc, "web")
    _known(web, {"root", "index"}, "[web]")
    root = web.get("root", "{root}")
    if not isinstance(root, str) or not root:
        raise ValueError("[web] root must be a path template")
    _check_placeholders(root, "[web] root")
    index = web.get("index", ["index.html", "index.htm"])
    if not isinstance(index, list) or not all(isinstance(i, str) and i for i in index):
        raise ValueError("[web] index must be a list of file names")
    commands: dict[str, tuple[str, ...]] = {}
    for name, argv in _table(doc, "commands").items():
        if name not in COMMANDS:
            raise ValueError(f"[commands]: unknown command {name!r} (known: "
                             f"{', '.join(COMMANDS)})")
        if (not isinstance(argv, list) or not argv
                or not all(isinstance(a, str) for a in argv)):
            raise ValueError(f"[commands] {name} must be a non-empty list of strings (an argv)")
        for item in argv:
            _check_placeholders(item, f"[commands] {name}")
        commands[name] = tuple(argv)
    env = _table(doc, "env")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("[env] must map names to strings")
    return Manifest(path, root, tuple(index), commands, {str(k): str(v) for k, v in env.items()})


def _check_placeholders(item: str, where: str) -> None:
    secrets = secret_field_names()
    for ref in PLACEHOLDER.findall(item):
        if ref in secrets:
            raise ValueError(f"{where}: {{{ref}}} is a secret and would show in the process "
                             f"list; read it from $HOSTCTL_FIELD_{ref.upper()} instead")
        if ref.startswith("option."):
            continue
        if ref not in DERIVED and ref not in SITE.fields:
            raise ValueError(f"{where}: unknown placeholder {{{ref}}}")


def _table(doc: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{key}] must be a table")
    return value


def _known(doc: Mapping[str, object], allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
