"""A platform's application manifest, ``hostctl-app.toml``: its web root and the
commands of its own steps. It travels with the code, in the platform root (or where the
platform's ``manifest`` field says)::

    format = 1

    [web]
    root = "{site_path}/public"      # the vhost's document root (default: "{root}")
    index = ["index.html"]           # default: index.html, index.htm (index.php for PHP)
    php = true                       # PHP through the site's own PHP-FPM pool
    front_controller = "index.php"   # PHP: serves every request for no file ("": none)
    deny = ["*.inc", "*.sql"]        # never served (beside dot files and the settings)

    [site]
    writable = ["files"]             # folders of ROOT/sites/URI its PHP may write

    [settings]                       # how a PHP application learns its settings
    file = "settings.php"            # written into ROOT/sites/URI, the site user's, 0400
    format = "php"                   # php (an array $hostctl), json, or env (KEY=value)
    env = true                       # the same values in the pool's environment

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
    DB_TYPE                 sqlite, pgsql, mariadb, mysql or none
    DB_NAME, DB_USER, DB_PASSWD, DB_HOST, DB_PORT
    DB_PATH                 the SQLite file ("" otherwise)

A command runs in the platform root, its output in the task's log with every secret
redacted; a non-zero exit fails the task (an install then undoes all it did).

A PHP application's settings (the file and the pool's environment) hold the DB_* values
above, SITE_URI, SITE_URL, SITE_PATH, SITE_NAME and SITE_SALT (random, kept for the site's
life: what an application uses for its hash salt or secret keys). Every pool's
environment also has SITE_URI, SITE_PATH and HOSTCTL_SETTINGS (the settings file's path),
so the application finds its site whatever host name a request came by.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hostctl.config import PLACEHOLDER, known_keys, table
from hostctl.contexts.schema import SITE, secret_field_names
from hostctl.contexts.store import Context
from hostctl.errors import MalformedFile
from hostctl.formats import check_format

MANIFEST = "hostctl-app.toml"
COMMANDS = ("install", "login_link", "cron")
SETTINGS_FORMATS = ("php", "json", "env")
#: a file name pattern of [web] deny, and a folder of [site] writable
_PATTERN = re.compile(r"[A-Za-z0-9._*-]{1,64}")
_FOLDER = re.compile(r"[A-Za-z0-9._-]{1,64}(?:/[A-Za-z0-9._-]{1,64}){0,7}")
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
    php: bool = False
    front_controller: str = ""
    deny: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    settings_file: str = ""
    settings_format: str = "php"
    settings_env: bool = False


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
    known_keys(doc, {"format", "web", "site", "settings", "commands", "env"}, MANIFEST)
    problem = check_format(doc.get("format", FORMAT), FORMAT, path)
    if problem:
        raise ValueError(problem)
    web = table(doc, "web")
    known_keys(web, {"root", "index", "php", "front_controller", "deny"}, "[web]")
    root = web.get("root", "{root}")
    if not isinstance(root, str) or not root:
        raise ValueError("[web] root must be a path template")
    _check_placeholders(root, "[web] root")
    php = web.get("php", False)
    if not isinstance(php, bool):
        raise ValueError("[web] php must be true or false")
    index = web.get("index", ["index.php"] if php else ["index.html", "index.htm"])
    if not isinstance(index, list) or not all(isinstance(i, str) and i for i in index):
        raise ValueError("[web] index must be a list of file names")
    front = web.get("front_controller", "index.php" if php else "")
    if not isinstance(front, str) or (front and not re.fullmatch(r"[A-Za-z0-9._-]+\.php",
                                                                 front)):
        raise ValueError("[web] front_controller must be a PHP file name (NAME.php)")
    if front and not php:
        raise ValueError("[web] front_controller needs php = true")
    deny = _strings(web, "deny", _PATTERN, "[web] deny: file name patterns (letters, "
                    "digits, '.', '_', '-', '*')")
    site = table(doc, "site")
    known_keys(site, {"writable"}, "[site]")
    writable = _strings(site, "writable", _FOLDER, "[site] writable: folders inside the "
                        "site folder (relative, no '..')")
    if any(".." in w.split("/") or w.startswith(".") for w in writable):
        raise ValueError("[site] writable: no '..' and no dot folder")
    settings = table(doc, "settings")
    known_keys(settings, {"file", "format", "env"}, "[settings]")
    file = settings.get("file", "")
    if not isinstance(file, str) or (file and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*",
                                                               file)):
        raise ValueError("[settings] file must be a file name (in the site folder)")
    fmt = settings.get("format", "php")
    if fmt not in SETTINGS_FORMATS:
        raise ValueError(f"[settings] format must be one of {', '.join(SETTINGS_FORMATS)}")
    env_flag = settings.get("env", not file)
    if not isinstance(env_flag, bool):
        raise ValueError("[settings] env must be true or false")
    if (file or settings) and not php:
        raise ValueError("[settings] needs php = true (a static site has no settings)")
    commands: dict[str, tuple[str, ...]] = {}
    for name, argv in table(doc, "commands").items():
        if name not in COMMANDS:
            raise ValueError(f"[commands]: unknown command {name!r} (known: "
                             f"{', '.join(COMMANDS)})")
        if (not isinstance(argv, list) or not argv
                or not all(isinstance(a, str) for a in argv)):
            raise ValueError(f"[commands] {name} must be a non-empty list of strings (an argv)")
        for item in argv:
            _check_placeholders(item, f"[commands] {name}")
        commands[name] = tuple(argv)
    env = table(doc, "env")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("[env] must map names to strings")
    return Manifest(path, root, tuple(index), commands,
                    {str(k): str(v) for k, v in env.items()}, php, front, deny, writable,
                    file, str(fmt), env_flag)


def _strings(table: Mapping[str, object], key: str, rule: re.Pattern[str],
             what: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and rule.fullmatch(v)
                                              for v in value):
        raise ValueError(what)
    return tuple(dict.fromkeys(value))


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
