"""The site tasks: install, verify, backup, restore, delete, disable, enable, clone,
migrate, login-reset and cron.

Where a site is: its platform's root holds its files in ``ROOT/sites/URI``; its web server
(the platform's ``web_server``, else its ``server``) serves them through a vhost; its
database server is the site's ``db_server``, else the platform's ``server``, else its
``web_server`` (a server whose ``db_service_type`` is ``none`` gives it no database). What
install made is recorded in the site's secrets file (provision/secrets.py), which is also
how every other task knows that the site is installed.

Tasks that create things (install, clone, migrate, restore) record each step in an
:class:`~hostctl.provision.job.Undo`; when a later step fails, or the task is stopped,
the steps are undone in reverse order, so a failed task leaves nothing behind: no folder,
no database, no vhost, no secrets file, no context change.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hostctl.contexts.names import display, parse_name
from hostctl.contexts.schema import FALSE_WORDS, NULL, TRUE_WORDS
from hostctl.contexts.store import Context
from hostctl.errors import Conflict, HostctlError, InvalidInput, NotFound, OperationFailed
from hostctl.files import write_atomic
from hostctl.provision import app, backup, certificates, layout, secrets
from hostctl.provision.checks import Checks
from hostctl.provision.job import Job, Ran, Undo, stoppable
from hostctl.provision.runner import _substitute
from hostctl.provision.secrets import DbCredentials, SiteRecord
from hostctl.provision.services import Database, database, suggest_name, web
from hostctl.provision.services.nginx import Nginx, Vhost, check_host
from hostctl.provision.services.php import PhpFpm, StepsFailed, settings_text, user_exists
from hostctl.provision.services.sqlite import Sqlite
from hostctl.provision.tasktype import RunContext, context_values
from hostctl.times import utc_iso

#: where a PHP site's SQLite database lives, in its folder
DB_FOLDER = ".db"
#: a site's basic authentication users, in its folder
AUTH_FILE = ".htpasswd"



# -- where a site is --------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Everything about where a site is (or is going): platform, uri, servers, paths."""

    platform: Context
    uri: str
    web_server: Context | None
    db_server: Context | None
    manifest: app.Manifest
    site_path: Path
    web: Nginx | None
    db: Database | None
    php: PhpFpm | None = None

    @property
    def root(self) -> str:
        return str(self.platform.get("root"))


def _ref(job: Job, value: object) -> Context | None:
    if not isinstance(value, str) or not value:
        return None
    return job.store.get(parse_name(value))


def place_for(job: Job, site: Context, *, platform: Context | None = None,
              uri: str | None = None, db_server: Context | None = None) -> Place:
    platform = platform or job.store.get(parse_name(str(site.get("platform"))))
    uri = check_host(uri or str(site.get("uri")), "uri")
    web_server = _ref(job, platform.get("web_server")) or _ref(job, platform.get("server"))
    if db_server is None:
        db_server = (_ref(job, site.get("db_server")) or _ref(job, platform.get("server"))
                     or web_server)
    manifest = app.load(platform)
    php = None
    if manifest.php:
        if web_server is None or web_server.get("php_service_type") != "php-fpm":
            where = web_server.display_name if web_server else "no web server"
            raise InvalidInput(f"platform {platform.display_name} is a PHP application; its "
                               f"web server ({where}) runs no PHP (php_service_type php-fpm)")
        php = PhpFpm(web_server, job.paths)
    path = layout.site_path(str(platform.get("root")), uri)
    db = database(db_server, job.paths)
    if php is not None and isinstance(db, Sqlite):
        # a PHP site's own user must reach its SQLite database: it lives in the site's
        # folder (a dot folder, never served), in a folder that user owns
        db.folder = path / DB_FOLDER
    return Place(platform, uri, web_server, db_server, manifest, path,
                 web(web_server, job.paths), db, php)


def values_for(job: Job, site: Context, place: Place,
               options: Mapping[str, str] | None = None) -> dict[str, str]:
    """The placeholders of the platform's commands and the HOSTCTL_FIELD_* values."""
    values = context_values(site, job.store)
    values.update(uri=place.uri, root=place.root, site_path=str(place.site_path),
                  platform=place.platform.display_name, task_id=job.rc.task_id)
    values["docroot"] = str(Path(place.root) / _substitute(place.manifest.web_root, values))
    for key, value in (options or {}).items():
        values[f"option.{key}"] = value
    return values


def docroot(job: Job, site: Context, place: Place) -> str:
    """What the site's vhost serves: the manifest's web root, which must stay inside the
    platform root once its placeholders (site fields among them) are filled in."""
    path = os.path.normpath(values_for(job, site, place)["docroot"])
    root = os.path.normpath(place.root)
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        raise InvalidInput(f"the web root {path} is not inside the platform root {root}")
    return path


def _db_environ(place: Place, creds: DbCredentials | None) -> dict[str, str]:
    if creds is None or place.db is None:
        return {"DB_TYPE": "none", "DB_NAME": "", "DB_USER": "", "DB_PASSWD": "",
                "DB_HOST": "", "DB_PORT": "", "DB_PATH": ""}
    return place.db.environ(creds)


def run_app(job: Job, site: Context, place: Place, step: str,
            creds: DbCredentials | None) -> Ran | None:
    """Run the platform's ``step`` command for the site; None if it has none."""
    template = place.manifest.commands.get(step)
    if template is None:
        return None
    values = values_for(job, site, place, job.rc.options)
    argv = [_substitute(item, values) for item in template]
    env = {f"HOSTCTL_FIELD_{k.upper()}": v for k, v in values.items()
           if not k.startswith("option.")}
    env.update(_db_environ(place, creds))
    env.update(place.manifest.env)
    if creds is not None:
        job.hide(creds.password)
    job.say(f"running the platform's {step} command: {argv[0]}")
    return job.run(argv, env=env, cwd=place.root, log=True,
                   what=f"the platform's {step} command")


def vhost_for(job: Job, site: Context, place: Place) -> Vhost:
    aliases = site.get("aliases") or []
    assert isinstance(aliases, list)
    disable_url = str(place.web_server.get("web_disable_url") or "") if place.web_server else ""
    root = docroot(job, site, place)
    cert = _certificate(job, site, place)
    socket, no_php = "", []
    if place.php is not None:
        record = _record(job, site)
        if record is None or not record.unix_user:
            raise OperationFailed(f"{site.display_name} has no site user yet (install it)")
        socket = str(place.php.socket(record.unix_user))
        for folder in place.manifest.writable:
            path = os.path.normpath(place.site_path / folder)
            if path == root or path.startswith(root.rstrip("/") + "/"):
                no_php.append(path[len(root.rstrip("/")):] or "/")
    return Vhost(site=site.name, uri=place.uri, aliases=tuple(aliases),
                 redirection=bool(site.get("redirection")), docroot=root,
                 index=place.manifest.index, enabled=bool(site.get("site_enabled")),
                 disable_url=disable_url, php_socket=socket,
                 front_controller=place.manifest.front_controller,
                 deny=place.manifest.deny, no_php=tuple(no_php),
                 auth_file=_auth_file(job, site, place), acme_root=str(place.site_path),
                 tls_cert=str(cert.fullchain) if cert else "",
                 tls_key=str(cert.key) if cert else "")


def _auth_file(job: Job, site: Context, place: Place) -> str:
    """The site's basic authentication user file, ``ROOT/sites/URI/.htpasswd``, written
    from its ``http_basic_auth_username`` and ``_password`` (the password hashed with
    SHA-512 crypt, handed to ``openssl passwd`` on stdin; a file whose hash already
    matches is left as it is); "" (and no file) without a user. In the site's folder,
    which the web server's workers reach (a PHP site's, through its group), a dot file
    no vhost serves, left out of backups (written again wherever one is restored)."""
    if place.web is None or not place.site_path.is_dir():
        return ""
    path = place.site_path / AUTH_FILE
    user = str(site.get("http_basic_auth_username") or "")
    if not user:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return ""
    password = str(site.get("http_basic_auth_password") or "")
    if not password:
        raise InvalidInput(f"{site.display_name}: http_basic_auth_username is set but "
                           "http_basic_auth_password is not")
    job.hide(password)
    try:
        old_user, _, old_hash = path.read_text().strip().partition(":")
    except (OSError, UnicodeDecodeError):
        old_user, old_hash = "", ""
    salt = old_hash.split("$")[2] if old_hash.startswith("$6$") and \
        old_hash.count("$") >= 3 else ""
    if old_user == user and salt and _crypt(job, password, salt) == old_hash:
        return str(path)
    hashed = _crypt(job, password)
    group = _group(place)
    # the web server's workers read it: its group's (0640) where the server names one
    write_atomic(path, f"{user}:{hashed}\n".encode(), mode=0o640 if group else 0o644)
    if group:
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except (KeyError, OSError) as exc:
            job.warn(f"cannot give {path} to the group {group}: {exc}")
            os.chmod(path, 0o644)
    return str(path)


def _crypt(job: Job, password: str, salt: str = "") -> str:
    """``password`` hashed with SHA-512 crypt (``$6$``), the password on openssl's stdin."""
    argv = ["openssl", "passwd", "-6", *(["-salt", salt] if salt else []), "-stdin"]
    hashed = job.run(argv, stdin=password + "\n",
                     what="hashing the basic authentication password").output.strip()
    if not hashed.startswith("$6$"):
        raise OperationFailed("openssl passwd gave no SHA-512 crypt hash")
    return hashed


# -- a PHP site's user, settings and pool -----------------------------------------------


def settings_values(job: Job, site: Context, place: Place,
                    record: SiteRecord) -> dict[str, str]:
    """What a PHP application learns of its site: DB_* and SITE_*."""
    db = _db_of(job, record.db)
    values = db.environ(record.db) if db is not None and record.db is not None \
        else _db_environ(place, None)
    scheme = "https" if site.get("ssl_enabled") else "http"
    values.update(SITE_NAME=site.display_name, SITE_URI=place.uri,
                  SITE_URL=f"{scheme}://{place.uri}", SITE_PATH=str(place.site_path),
                  SITE_SALT=record.salt)
    return values


def php_apply(job: Job, site: Context, place: Place, record: SiteRecord,
              undo: Undo | None = None) -> SiteRecord:
    """A PHP site's user (made if the record has none), its folder shared with it, its
    writable folders given to it, its settings file and its pool; the record as it is
    now (written). Nothing for a static site. Each step may be run again (verify)."""
    php = place.php
    if php is None:
        return record
    user = record.unix_user
    if not user:
        user = php.new_user(place.uri)
        record = record.with_(unix_user=user, salt=record.salt or secrets.new_password())
    elif not record.salt:
        record = record.with_(salt=secrets.new_password())
    job.hide(record.salt)
    made = not user_exists(user)
    job.secrets.write(record)
    folder = place.site_path
    writable = list(place.manifest.writable)
    if _db_inside(record, folder):
        writable.append(DB_FOLDER)
        assert record.db is not None
        dbfile = Path(record.db.path)
        if dbfile.exists() and dbfile.stat().st_uid == os.geteuid():
            os.chmod(dbfile, 0o644)  # its user writes it; backups (the back end) read it
    for rel in writable:
        (folder / rel).mkdir(mode=0o755, parents=True, exist_ok=True)
    values = settings_values(job, site, place, record)
    manifest = place.manifest
    # every pool tells its PHP which site it serves and where its settings are, whatever
    # host name a request came by (an alias, say)
    env = dict(values) if manifest.settings_env else {}
    env.update(SITE_URI=place.uri, SITE_PATH=str(folder))
    if manifest.settings_file:
        env["HOSTCTL_SETTINGS"] = str(folder / manifest.settings_file)
    pool_values = {"uri": place.uri, "site_path": str(folder), "root": place.root,
                   "user": user}
    had_pool = php.settings.pool_file(user).exists()
    # one run of the helper (one sudo) for it all, in this order
    steps: list[tuple[str, list[str], str]] = [("user-add", [user], ""),
                                               ("share", [user, str(folder)], "")]
    steps += [("give", [user, str(folder / rel)], "") for rel in writable]
    if manifest.settings_file:
        steps.append(("settings", [user, str(folder / manifest.settings_file)],
                      settings_text(manifest.settings_format, values)))
    steps.append(("pool-write", [user], php.pool_body(env, pool_values)))
    try:
        done = php.batch(job, steps)
    except StepsFailed as exc:
        _php_undo(job, php, user, folder, undo, len(exc.done), made=made, pool=False)
        raise
    _php_undo(job, php, user, folder, undo, len(done), made=made, pool=not had_pool)
    for line in done:
        job.say(line)
    return record


def _php_undo(job: Job, php: PhpFpm, user: str, folder: Path, undo: Undo | None,
              done: int, *, made: bool, pool: bool) -> None:
    """What undoes the steps of :func:`php_apply` that were done: the user it made (the
    first step), the folder it shared (the second), the pool it added (the last)."""
    if undo is None:
        return
    if made and done >= 1:
        undo.add(f"the site user {user}", lambda: php.remove_user(job, user))
    if done >= 2:
        undo.add(f"the files of {user} in {folder}", lambda: php.take(job, user, folder))
    if pool:
        undo.add(f"the PHP-FPM pool of {user}", lambda: php.remove_pool(job, user))


def _db_inside(record: SiteRecord, folder: Path) -> bool:
    """Does the site's SQLite database live in its folder (a PHP site's)?"""
    return (record.db is not None and record.db.type == "sqlite"
            and Path(record.db.path).is_relative_to(folder / DB_FOLDER))


def _php_of(job: Job, record: SiteRecord) -> PhpFpm | None:
    """The PHP service that runs an installed PHP site (None for a static one)."""
    if not record.unix_user or not record.web_server:
        return None
    try:
        server = job.store.get(parse_name(record.web_server))
    except NotFound:
        job.warn(f"the web server {record.web_server} is gone: the site user "
                 f"{record.unix_user} and its pool stay")
        return None
    return PhpFpm(server, job.paths)


def _take_back(job: Job, record: SiteRecord, folder: Path) -> None:
    """A PHP site's files under ``folder`` back to the back end, so it may move or
    remove them."""
    php = _php_of(job, record)
    if php is not None and folder.exists():
        php.take(job, record.unix_user, folder)


# -- HTTPS ------------------------------------------------------------------------------


def site_names(site: Context, place: Place) -> list[str]:
    aliases = site.get("aliases") or []
    assert isinstance(aliases, list)
    return [place.uri, *(a for a in aliases if a != place.uri)]


def _certificate(job: Job, site: Context, place: Place) -> certificates.Cert | None:
    """The certificate the site is served with: none without ``ssl_enabled``; the
    operator's (``ssl_key``), checked; else the ACME CA's, once it covers the site's
    names (until then, and while one is being got, the site is served over HTTP)."""
    if not site.get("ssl_enabled") or place.web is None:
        return None
    names = site_names(site, place)
    name = str(site.get("ssl_key") or "")
    if name:
        return certificates.operator(job, name, names)
    cert = certificates.issued(job, site.name)
    return cert if cert is not None and cert.covers(names) else None


def https(job: Job, site: Context, place: Place) -> certificates.Cert | None:
    """Get the site a certificate from its web server's ACME CA when it has none that
    covers its names, or renew one that expires within ``ssl_renew_days``; then serve
    it. None when the site does not ask for HTTPS."""
    if not site.get("ssl_enabled"):
        return None
    if place.web is None or place.web_server is None:
        raise InvalidInput(f"{site.display_name}: HTTPS needs a web server")
    server = place.web_server
    cert = _certificate(job, site, place)
    if not site.get("ssl_key"):
        days = int(str(server.get("ssl_renew_days") or 30))
        if cert is None or cert.days_left() < days:
            old = certificates.issued(job, site.name)
            write_vhost(job, site, place)  # the challenge is served on every name first
            cert = certificates.issue(
                job, site.name, site_names(site, place), place.site_path,
                directory=str(server.get("ssl_acme_directory") or certificates.LETS_ENCRYPT),
                email=str(server.get("admin_email") or ""),
                ca_bundle=str(server.get("ssl_ca_bundle") or ""), force=old is not None)
            job.result["certificate_renewed"] = True
    if cert is not None:
        write_vhost(job, site, place)
        job.result.update(certificate=str(cert.fullchain), certificate_source=cert.source,
                          certificate_expires=f"{cert.not_after:%Y-%m-%dT%H:%M:%SZ}")
    return cert


def _https_or_warn(job: Job, site: Context, place: Place) -> None:
    """:func:`https` for a task whose own work is done (install, migrate): a certificate
    that cannot be had yet is a warning, the site served over HTTP meanwhile."""
    try:
        https(job, site, place)
    except (OperationFailed, InvalidInput) as exc:
        job.warn(f"HTTPS is not set up yet: {exc.message}; the site is served over HTTP "
                 "(verify, or the periodic ssl queue, tries again)")


def ssl(rc: RunContext) -> int:
    """The ``ssl`` task: a certificate for a site that lacks one, a renewal when due."""
    job = Job(rc)
    site = rc.context
    record = _record(job, site)
    if record is None or not site.get("ssl_enabled"):
        job.say(f"{site.display_name} is not installed or does not ask for HTTPS "
                "(ssl_enabled): nothing to do")
        job.result["certificate_renewed"] = False
        return 0
    job.hide(*job.secrets.values(site.name))
    job.result["certificate_renewed"] = False
    cert = https(job, site, place_for(job, site))
    if cert is not None and not job.result["certificate_renewed"]:
        job.say(f"certificate of {site.display_name} good until {cert.not_after:%Y-%m-%d}: "
                "not due for renewal")
    return 0


def write_vhost(job: Job, site: Context, place: Place, undo: Undo | None = None) -> str:
    """Write the site's vhost (served or disabled, as the context says); ``""`` if the
    site has no web server."""
    if place.web is None:
        return ""
    nginx = place.web
    old = nginx.current(site.name)
    path = nginx.write(job, vhost_for(job, site, place))
    if undo is not None:
        undo.add(f"the vhost {path}", lambda: nginx.restore(job, site.name, old))
    return str(path)


def fix_permissions(job: Job, top: Path, group: str = "", *, keep_top: bool = False) -> int:
    """Make the site folder writable by its owner only and passable by the web server:
    folders 0755 (0750 with the server's ``web_group``, which then owns them); files lose
    any write bit but their owner's and never gain a read bit they lacked, so a file the
    application keeps private (a 0600 settings file with its database password) stays
    private and is not served (with ``web_group``, a file others could read becomes
    readable by that group instead). Execute bits of files are kept. Entries of another
    owner (a PHP site's user) are left as they are, and with ``keep_top`` the folder
    itself (a PHP site's, shared with its user). Returns how many entries changed."""
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            job.warn(f"web_group {group!r} does not exist: permissions set for everyone")
    changed = 0
    me = os.geteuid()
    for path in [*([] if keep_top else [top]), *backup.walk(top)]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or st.st_uid != me:
            continue  # a PHP site's own files (its writable folders, its settings) stay
        mode = stat.S_IMODE(st.st_mode)
        folder = stat.S_ISDIR(st.st_mode)
        want = mode | (0o700 if folder else 0o600)
        if folder:
            want = (want | 0o050) & ~0o027 if gid >= 0 else (want | 0o055) & ~0o022
        elif gid >= 0:
            want = (want | (0o040 if mode & 0o044 else 0)) & ~0o027
        else:
            want &= ~0o022
        want &= ~0o7000 if not stat.S_ISDIR(st.st_mode) else ~0o5000
        try:
            if gid >= 0 and st.st_gid != gid:
                os.chown(path, -1, gid, follow_symlinks=False)
                changed += 1
            if want != mode:
                os.chmod(path, want)
                changed += 1
        except OSError as exc:
            job.warn(f"cannot set the permissions of {path}: {exc.strerror}")
    return changed


def _group(place: Place) -> str:
    return str(place.web_server.get("web_group") or "") if place.web_server else ""


def _record(job: Job, site: Context) -> SiteRecord | None:
    return job.secrets.read(site.name)


def _installed(job: Job, site: Context) -> SiteRecord:
    record = _record(job, site)
    if record is None:
        raise Conflict(f"{site.display_name} is not installed (run install first)")
    job.hide(*job.secrets.values(site.name))
    return record


def _db_of(job: Job, creds: DbCredentials | None) -> Database | None:
    if creds is None:
        return None
    return database(job.store.get(parse_name(creds.server)), job.paths)


def _web_of(job: Job, record: SiteRecord) -> Nginx | None:
    if not record.web_server:
        return None
    try:
        return web(job.store.get(parse_name(record.web_server)), job.paths)
    except NotFound:
        job.warn(f"the web server {record.web_server} is gone: its vhost stays")
        return None


def _flag(job: Job, name: str) -> bool:
    raw = job.rc.options.get(name, "").strip().lower()
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS or not raw:  # not given: no
        return False
    raise InvalidInput(f"--{name} takes yes or no, not {raw!r}")


def _open_for_sites(platform: Context) -> None:
    if platform.get("locked"):
        raise Conflict(f"platform {platform.display_name} is locked: it accepts no new sites")


def _guard(site: Context, task: str) -> None:
    if site.get("protected"):
        raise Conflict(f"{site.display_name} is protected: {task} is refused (set "
                       "--protected no to allow it)")


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return "" if value is None else str(value)


# -- creating and removing installations ------------------------------------------------


def create_installation(job: Job, site: Context, place: Place, undo: Undo, *,
                        archive: backup.Archive | None = None,
                        keep_db: DbCredentials | None = None,
                        previous: SiteRecord | None = None) -> SiteRecord:
    """Make the site's folder and database (empty, or from ``archive``), then its record.

    ``keep_db``: the site keeps this database (a migrate that changes no database
    server). ``previous``: the record an undo puts back (else it removes the record)."""
    sites_dir = place.site_path.parent
    if not sites_dir.exists():
        sites_dir.mkdir(mode=0o755, parents=True)
        undo.add(f"the folder {sites_dir}", lambda: _rmdir_if_empty(sites_dir))
    if place.site_path.exists():
        raise Conflict(f"the site folder {place.site_path} exists already")
    if archive is not None:
        archive.extract_files(place.site_path, job.warn)
    else:
        place.site_path.mkdir(mode=0o755)
    undo.add(f"the site folder {place.site_path}",
             lambda: shutil.rmtree(place.site_path, ignore_errors=True))
    job.say(f"site folder {place.site_path} created")

    creds = keep_db
    if keep_db is None and place.db is not None:
        db = place.db
        if isinstance(db, Sqlite) and db.folder.is_relative_to(place.site_path):
            db.folder.mkdir(mode=0o755, exist_ok=True)  # its user's, readable by backups
        creds = db.create(job, suggest_name(job, db, place.uri))
        made = creds
        undo.add(f"the database {creds.name}", lambda: db.drop(job, made))
        if archive is not None:
            if archive.db_type not in ("none", db.type):
                raise InvalidInput(f"the backup holds a {archive.db_type} database; "
                                   f"{place.db_server.display_name if place.db_server else ''}"
                                   f" is a {db.type} server")
            with tempfile.TemporaryDirectory(dir=layout.backups_dir(job.paths)) as tmp:
                dump = archive.extract_dump(Path(tmp))
                if dump is not None:
                    db.load(job, creds, dump)
                    job.say(f"database {creds.name} loaded from {archive.path.name}")

    # to the microsecond: the installation's identity (backup retention tells a site
    # from one deleted before it under the same name by it)
    installed = utc_iso(digits=6)
    record = SiteRecord(site=site.display_name, installed=installed,
                        platform=place.platform.display_name, uri=place.uri,
                        site_path=str(place.site_path),
                        web_server=place.web_server.display_name if place.web_server else "",
                        db=creds)
    job.secrets.write(record)
    if previous is None:
        undo.add("the secrets file", lambda: job.secrets.remove(site.name))
    else:
        undo.add("the secrets file", lambda: job.secrets.write(previous))
    return record


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def remove_installation(job: Job, site: Context, record: SiteRecord) -> None:
    """Vhost, database, files, then the record: each step may be run again."""
    nginx = _web_of(job, record)
    if nginx is not None and nginx.remove(job, site.name):
        job.say(f"vhost of {site.display_name} removed")
    php = _php_of(job, record)
    if php is not None:
        php.remove_pool(job, record.unix_user)
    path = Path(record.site_path)
    _take_back(job, record, path)  # (a PHP site's SQLite database is in there too)
    db = _db_of(job, record.db)
    if db is not None and record.db is not None:
        db.drop(job, record.db)
    if path.exists():
        shutil.rmtree(path)
        job.say(f"site folder {path} removed")
    if php is not None:
        php.remove_user(job, record.unix_user)
    certificates.forget(job, site.name)
    job.secrets.remove(site.name)


def _set_aside(job: Job, old: SiteRecord, undo: Undo) -> Path | None:
    """Rename the old installation's folder to ``.NAME.reinstall`` beside it (the undo
    renames it back); its database and vhost stay as they are meanwhile."""
    path = Path(old.site_path)
    if not path.exists():
        return None
    aside = path.with_name(f".{path.name}.reinstall")
    shutil.rmtree(aside, ignore_errors=True)  # a leftover of a reinstall cut off
    os.rename(path, aside)
    undo.add(f"the old site folder {path}", lambda: os.rename(aside, path))
    return aside


def _remove_set_aside(job: Job, site: Context, old: SiteRecord, aside: Path | None,
                      new: SiteRecord) -> None:
    """Once the new installation stands: the old database, folder and (on another web
    server) vhost go. A failure here is a warning: the new installation is done."""
    try:
        db = _db_of(job, old.db)
        if db is not None and old.db is not None and old.db != new.db:
            db.drop(job, old.db)
        if aside is not None:
            _take_back(job, old, aside)
            shutil.rmtree(aside)
        if old.web_server and old.web_server != new.web_server:
            nginx = _web_of(job, old)
            if nginx is not None:
                nginx.remove(job, site.name)
    except (HostctlError, OSError) as exc:
        job.warn(f"the old installation was not wholly removed: {exc}")


def _backup(job: Job, site: Context, record: SiteRecord, reason: str) -> backup.Backup:
    # a PHP site's settings file is its user's alone, and written again wherever the
    # backup goes: never in it
    leave_out: frozenset[str] = frozenset({AUTH_FILE})
    if record.unix_user:
        try:
            manifest = app.load(job.store.get(parse_name(record.platform)))
        except HostctlError:
            manifest = app.Manifest()
        # (and its SQLite database, in the backup as its dump)
        leave_out = frozenset({manifest.settings_file, DB_FOLDER, AUTH_FILE} - {""})
    return backup.create(job, site, record, reason, _db_of(job, record.db),
                         leave_out=leave_out)


# -- the tasks --------------------------------------------------------------------------


def install(rc: RunContext) -> int:
    job = Job(rc)
    site = rc.context
    with stoppable():
        reinstall = _flag(job, "reinstall")
        old = _record(job, site)
        if old is not None and not reinstall:
            raise Conflict(f"{site.display_name} is installed already (since {old.installed});"
                           " give --reinstall yes to install it again")
        place = place_for(job, site)
        _open_for_sites(place.platform)
        if old is not None:
            _guard(site, "reinstall")
            job.hide(*job.secrets.values(site.name))
            made = _backup(job, site, old, "reinstall")
            job.result["backup_file"] = str(made.path)
        with Undo(job) as undo:
            # a reinstall sets the old installation aside (its folder renamed, its
            # database left as it is) and removes it only once the new one stands: a
            # failure puts it back as it was
            aside = _set_aside(job, old, undo) if old is not None else None
            if place.site_path.exists():
                raise Conflict(f"the site folder {place.site_path} exists already (not made "
                               "by hostctl); move it away first")
            record = create_installation(job, site, place, undo, previous=old)
            if old is not None and old.unix_user and place.php is not None:
                record = record.with_(unix_user=old.unix_user, salt=old.salt)
            run_app(job, site, place, "install", record.db)
            fix_permissions(job, place.site_path, _group(place))
            record = php_apply(job, site, place, record, undo)
            vhost = write_vhost(job, site, place, undo)
        if old is not None:
            _remove_set_aside(job, site, old, aside, record)
        if place.web is not None:
            _https_or_warn(job, site, place)
    job.say(f"{site.display_name} installed: {place.uri} from {place.site_path}")
    job.result.update(_summary(record, vhost))
    return 0


def _summary(record: SiteRecord, vhost: str) -> dict[str, object]:
    return {"uri": record.uri, "platform": record.platform, "site_path": record.site_path,
            "vhost": vhost, "db_type": record.db.type if record.db else "none",
            "db_name": record.db.name if record.db else "",
            "db_server": record.db.server if record.db else ""}


def verify(rc: RunContext) -> int:
    job = Job(rc)
    checks = Checks(job)
    site = rc.context
    platform = job.store.get(parse_name(str(site.get("platform"))))
    root = Path(str(platform.get("root")))
    if root.is_dir():
        checks.record(True, f"platform root {root} exists")
    else:
        checks.record(False, f"platform root {root} is missing")
    record = _record(job, site)
    job.result["context"] = site.display_name
    job.result["installed"] = record is not None
    if record is None:
        checks.record(True, f"{site.display_name} is not installed yet: nothing to regenerate")
        if platform.get("locked"):
            checks.record(None, f"platform {platform.display_name} is locked: the site "
                                "cannot be installed on it")
        return checks.code()
    job.hide(*job.secrets.values(site.name))
    if record.platform != platform.display_name or record.uri != site.get("uri"):
        checks.record(False, f"{site.display_name} is installed on {record.platform} as "
                             f"{record.uri}, but its context names {platform.display_name} "
                             f"and {site.get('uri')}: use migrate to move it")
        return checks.code()
    place = checks.attempt("the site's services", lambda: place_for(job, site))
    if place is None:
        return checks.code()
    path = Path(record.site_path)
    if not path.is_dir():
        checks.record(False, f"site folder {path} is missing")
    else:
        changed = fix_permissions(job, path, _group(place), keep_top=place.php is not None)
        checks.record(True, f"site folder {path}: permissions "
                            + (f"fixed on {changed} entries" if changed else "in order"))
        if place.php is not None:
            installed = record
            done = checks.attempt("the site's PHP", lambda: php_apply(job, site, place,
                                                                      installed))
            if done is not None:
                record = done
                checks.record(True, f"site user {record.unix_user}: folder, settings and "
                                    "PHP-FPM pool written again")
    db = _db_of(job, record.db)
    if db is not None and record.db is not None:
        creds = record.db
        there = checks.attempt(f"database {creds.name}", lambda: db.exists(job, creds))
        if there is not None:
            checks.record(there, f"database {creds.name} on {creds.server} "
                                 + ("exists" if there else "is missing"))
    # the settings: the secrets file rewritten (0600) with what the servers say now
    written = checks.attempt("the secrets file", lambda: job.secrets.write(record))
    if written is not None:
        checks.record(True, f"{written} rewritten")
    if place.web is not None and path.is_dir():
        vhost = checks.attempt("the vhost", lambda: write_vhost(job, site, place))
        if vhost:
            checks.record(True, f"vhost {vhost} regenerated"
                                + ("" if site.get("site_enabled") else " (disabled)"))
        if vhost and site.get("ssl_enabled"):
            cert = checks.attempt("HTTPS", lambda: https(job, site, place))
            if cert is not None:
                checks.record(True, f"HTTPS: {cert.source} certificate for "
                                    f"{', '.join(cert.names)} until {cert.not_after:%Y-%m-%d}")
    job.result.update(_summary(record, ""))
    return checks.code()


def backup_task(rc: RunContext) -> int:
    job = Job(rc)
    site = rc.context
    record = _installed(job, site)
    made = _backup(job, site, record, "backup")
    job.result.update(backup_file=str(made.path), backup_file_size=made.size,
                      file=str(made.path), size=made.size)
    removed = backup.apply_retention(job, record)
    if removed:
        job.result["removed_backups"] = removed
    return 0


def restore(rc: RunContext) -> int:
    job = Job(rc)
    site = rc.context
    with stoppable():
        record = _installed(job, site)
        place = place_for(job, site)
        path = backup.resolve(job, record.uri, job.rc.options.get("file", ""))
        with backup.Archive(path) as archive:
            if archive.site != site.display_name:
                raise Conflict(f"{path.name} is a backup of {archive.site}, not of "
                               f"{site.display_name}")
            db = _db_of(job, record.db)
            if archive.db_type != (record.db.type if record.db else "none"):
                raise Conflict(f"{path.name} holds a {archive.db_type} database; the site's "
                               f"is {record.db.type if record.db else 'none'}")
            pre = _backup(job, site, record, "restore")
            job.result.update(file=str(path), pre_restore_backup=str(pre.path))
            site_path = Path(record.site_path)
            fresh = site_path.with_name(f".{site_path.name}.restore")
            old = site_path.with_name(f".{site_path.name}.old")
            for leftover in (fresh, old):
                shutil.rmtree(leftover, ignore_errors=True)
            with Undo(job) as undo:
                if place.php is not None:
                    # the back end moves and loads only what it owns: the site's files
                    # are handed back to its user at the end (or by the undo)
                    _take_back(job, record, site_path)
                    undo.add(f"the files of {record.unix_user}",
                             lambda: php_apply(job, site, place, record))
                archive.extract_files(fresh, job.warn)
                undo.add(f"the restored files {fresh}",
                         lambda: shutil.rmtree(fresh, ignore_errors=True))
                if db is not None and record.db is not None:
                    _load_from(job, db, record.db, archive)
                    undo.add(f"the database {record.db.name}",
                             lambda: _load_from(job, db, record.db, backup.Archive(pre.path)))
                os.rename(site_path, old)
                undo.add(f"the site folder {site_path}", lambda: os.rename(old, site_path))
                os.rename(fresh, site_path)
                undo.add(f"the restored files {site_path}", lambda: os.rename(site_path, fresh))
                if (old / DB_FOLDER).is_dir() and _db_inside(record, site_path):
                    # a PHP site's SQLite database lives in its folder: it stays the
                    # database just loaded, in the folder just restored
                    os.rename(old / DB_FOLDER, site_path / DB_FOLDER)
                    undo.add("the database folder", lambda: os.rename(
                        site_path / DB_FOLDER, old / DB_FOLDER))
                fix_permissions(job, site_path, _group(place))
                if place.php is not None:
                    undo.add(f"the restored files of {record.unix_user}",
                             lambda: _take_back(job, record, site_path))
                php_apply(job, site, place, record)
                write_vhost(job, site, place)
            _take_back(job, record, old)
            shutil.rmtree(old, ignore_errors=True)
    job.say(f"{site.display_name} restored from {path}")
    return 0


def _load_from(job: Job, db: Database, creds: DbCredentials | None,
               archive: backup.Archive) -> None:
    assert creds is not None
    with tempfile.TemporaryDirectory(dir=layout.backups_dir(job.paths)) as tmp:
        dump = archive.extract_dump(Path(tmp))
        if dump is None:
            raise OperationFailed(f"{archive.path.name} holds no database dump")
        db.load(job, creds, dump)
    job.say(f"database {creds.name} loaded from {archive.path.name}")


def delete(rc: RunContext) -> int:
    job = Job(rc)
    site = rc.context
    if job.rc.options.get("force"):
        raise InvalidInput("--force applies to a platform's delete, not a site's")
    _guard(site, "delete")
    if site.get("site_enabled") and job.config.provision.require_disable_before_delete:
        raise Conflict(f"{site.display_name} is enabled: disable it before deleting it "
                       "([provision] require_disable_before_delete)")
    with stoppable():
        record = _record(job, site)
        if record is not None and record.db is not None \
                and not job.store.exists(parse_name(record.db.server)):
            # its database server's context is gone: nothing here can reach the database.
            # The site goes all the same; its database is left, and said so
            left = f"database {record.db.name} on {record.db.server}"
            job.warn(f"the database server {record.db.server} is no longer known: the "
                     f"{left} is left as it is (drop it by hand); the backup holds no dump")
            job.result["database_left"] = left
            record = record.with_(db=None)
        if record is not None:
            job.hide(*job.secrets.values(site.name))
            made = _backup(job, site, record, "delete")
            job.result.update(backup_file=str(made.path), backup_file_size=made.size)
            remove_installation(job, site, record)
        job.store.delete(site.name)
    job.say(f"{site.display_name} deleted" + (f"; its last backup: {made.path}"
                                               if record is not None else ""))
    job.result["deleted"] = site.display_name
    return 0


def _set_enabled(rc: RunContext, enabled: bool) -> int:
    job = Job(rc)
    site = rc.context
    if not enabled:
        _guard(site, "disable")
    with stoppable(), Undo(job) as undo:
        before = site.values.get("site_enabled")
        site = job.store.save(site.name, {"site_enabled": "true" if enabled else "false"}
                              ).context
        undo.add("the site's site_enabled", lambda: job.store.save(
            site.name, {"site_enabled": NULL if before is None else _text(before)}))
        record = _record(job, site)
        vhost = ""
        if record is not None:
            vhost = write_vhost(job, site, place_for(job, site))
    job.say(f"{site.display_name} {'enabled' if enabled else 'disabled'}"
            + (f" (vhost {vhost})" if vhost else ""))
    job.result.update(site_enabled=enabled, vhost=vhost)
    return 0


def disable(rc: RunContext) -> int:
    return _set_enabled(rc, False)


def enable(rc: RunContext) -> int:
    return _set_enabled(rc, True)


#: fields a clone does not take from its original (Aegir: no aliases, no redirection,
#: no SSL); uri is the new one
_NOT_CLONED = {"uri", "aliases", "redirection", "ssl_enabled", "ssl_key", "drush_aliases",
               "protected", "cron_key"}


def clone(rc: RunContext) -> int:
    job = Job(rc)
    site = rc.context
    with stoppable():
        new_uri = check_host(job.rc.options.get("new_uri", "").strip().lower(), "--new_uri")
        new_name = parse_name(job.rc.options.get("new_name", "").strip() or new_uri)
        if job.store.exists(new_name):
            raise Conflict(f"{display(new_name)} exists already")
        record = _installed(job, site)
        target = place_for(job, site, uri=new_uri)
        _open_for_sites(target.platform)
        if target.site_path.exists():
            raise Conflict(f"the site folder {target.site_path} exists already")
        made = _backup(job, site, record, "clone")
        job.result["backup_file"] = str(made.path)
        fields = {k: _text(v) for k, v in site.values.items() if k not in _NOT_CLONED}
        fields["uri"] = new_uri
        with backup.Archive(made.path) as archive, Undo(job) as undo:
            # created only if the name is still free: checked and saved under one lock
            copy = job.store.save(new_name, fields, "site", create_only=True).context
            undo.add(f"the context {copy.display_name}",
                     lambda: job.store.delete(new_name))
            new_record = create_installation(job, copy, target, undo, archive=archive)
            fix_permissions(job, target.site_path, _group(target))
            new_record = php_apply(job, copy, target, new_record, undo)
            vhost = write_vhost(job, copy, target, undo)
    job.say(f"{site.display_name} cloned to {copy.display_name} ({new_uri})")
    job.result.update(_summary(new_record, vhost), clone=copy.display_name)
    return 0


def migrate(rc: RunContext) -> int:
    job = Job(rc)
    site = rc.context
    opts = job.rc.options
    with stoppable():
        record = _installed(job, site)
        current = job.store.get(parse_name(record.platform))
        platform = (job.store.get(parse_name(opts["platform"])) if opts.get("platform")
                    else current)
        if platform.type != "platform":
            raise InvalidInput(f"--platform: {platform.display_name} is a {platform.type}")
        new_uri = check_host(opts.get("new_uri", "").strip().lower() or record.uri,
                             "--new_uri")
        db_server = _ref(job, opts.get("db_server")) if opts.get("db_server") else None
        if db_server is not None and db_server.type != "server":
            raise InvalidInput(f"--db_server: {db_server.display_name} is a {db_server.type}")
        target = place_for(job, site, platform=platform, uri=new_uri, db_server=db_server)
        same_db = (record.db is None and target.db is None) or (
            record.db is not None and target.db_server is not None
            and record.db.server == target.db_server.display_name)
        same_files = Path(record.site_path) == target.site_path
        if not same_files and _db_inside(record, Path(record.site_path)):
            same_db = False  # a PHP site's SQLite database moves with its folder
        if same_files and same_db:
            raise InvalidInput("migrate needs another --platform, --new_uri or --db_server")
        if platform.name != current.name:
            _open_for_sites(platform)
        if not same_db and record.db is not None and target.db is not None \
                and target.db.type != record.db.type:
            raise InvalidInput(f"cannot move a {record.db.type} database to a "
                               f"{target.db.type} server")
        if not same_db and record.db is not None and target.db is None:
            where = target.db_server.display_name if target.db_server else "the target"
            raise InvalidInput(f"{where} has no database service for the site's database")
        if not same_files and target.site_path.exists():
            raise Conflict(f"the site folder {target.site_path} exists already")
        made = _backup(job, site, record, "migrate")
        job.result["backup_file"] = str(made.path)
        changes: dict[str, str] = {}
        inverse: dict[str, str] = {}
        for key, value in (("platform", platform.display_name), ("uri", new_uri),
                           ("db_server", target.db_server.display_name
                            if db_server is not None and target.db_server else None)):
            if value is not None and site.get(key) != value:
                changes[key] = value
                old = site.values.get(key)
                inverse[key] = NULL if old is None else _text(old)
        old_web = _web_of(job, record)
        old_vhost = old_web.current(site.name) if old_web is not None else None
        with backup.Archive(made.path) as archive, Undo(job) as undo:
            moved = job.store.save(site.name, changes).context
            undo.add("the site's context", lambda: job.store.save(site.name, inverse))
            if same_files:
                new_record = _migrate_db_only(job, moved, target, record, archive, undo)
            else:
                new_record = create_installation(
                    job, moved, target, undo, archive=archive,
                    keep_db=record.db if same_db else None, previous=record)
                new_record = new_record.with_(unix_user=record.unix_user, salt=record.salt)
            fix_permissions(job, target.site_path, _group(target),
                            keep_top=same_files and target.php is not None)
            new_record = php_apply(job, moved, target, new_record, undo)
            vhost = write_vhost(job, moved, target, undo)
            if old_web is not None and (target.web is None or
                                        old_web.vhost_dir != target.web.vhost_dir):
                old_web.remove(job, site.name)
                undo.add("the old vhost", lambda: old_web.restore(job, site.name, old_vhost))
    # the new copy serves the site: the old one goes
    if not same_files:
        _take_back(job, record, Path(record.site_path))
        shutil.rmtree(record.site_path, ignore_errors=True)
        job.say(f"old site folder {record.site_path} removed")
    if not same_db and record.db is not None:
        old_db = _db_of(job, record.db)
        try:
            if old_db is not None:
                old_db.drop(job, record.db)
        except OperationFailed as exc:
            job.warn(f"the old database {record.db.name} stays: {exc.message}")
    if target.web is not None:
        _https_or_warn(job, moved, target)
    job.say(f"{site.display_name} migrated to {platform.display_name} as {new_uri}")
    job.result.update(_summary(new_record, vhost))
    return 0


def _migrate_db_only(job: Job, site: Context, target: Place, record: SiteRecord,
                     archive: backup.Archive, undo: Undo) -> SiteRecord:
    """A migrate that keeps the files where they are and moves the database."""
    assert target.db is not None
    db = target.db
    creds = db.create(job, suggest_name(job, db, target.uri))
    undo.add(f"the database {creds.name}", lambda: db.drop(job, creds))
    _load_from(job, db, creds, archive)
    new = record.with_(db=creds, uri=target.uri, installed=record.installed)
    job.secrets.write(new)
    undo.add("the secrets file", lambda: job.secrets.write(record))
    return new


def login_reset(rc: RunContext) -> int:
    job = Job(rc)
    site = rc.context
    record = _installed(job, site)
    if not site.get("site_enabled"):
        raise Conflict(f"{site.display_name} is disabled: enable it first")
    place = place_for(job, site)
    ran = run_app(job, site, place, "login_link", record.db)
    if ran is None:
        raise OperationFailed(f"platform {place.platform.display_name} has no login_link "
                              "command (hostctl-app.toml [commands])")
    link = next((ln.strip() for ln in reversed(ran.output.splitlines()) if ln.strip()), "")
    if not link:
        raise OperationFailed("the login_link command printed no link")
    job.result["login_link"] = link
    return 0


def cron(rc: RunContext) -> int:
    job = Job(rc)
    site = rc.context
    record = _record(job, site)
    if record is None:
        job.say(f"{site.display_name} is not installed: no cron to run")
        job.result["ran"] = False
        return 0
    job.hide(*job.secrets.values(site.name))
    place = place_for(job, site)
    ran = run_app(job, site, place, "cron", record.db)
    if ran is None:
        job.say(f"platform {place.platform.display_name} has no cron command")
    job.result["ran"] = ran is not None
    return 0
