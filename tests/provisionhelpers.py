"""Real services for the provision tests: a private nginx on a free loopback port and a
private PostgreSQL cluster (initdb, pg_ctl) as an unprivileged user, both under a
temporary folder; platforms with a hostctl-app.toml; HTTP requests with a Host header.

A program the tests need that is missing fails the test when running as root (CI
installs tests/debian-packages), and skips it otherwise.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from taskhelpers import wait_for

AS_ROOT = os.geteuid() == 0


def need(program: str, *candidates: str) -> str:
    """The path of ``program`` (PATH or one of ``candidates``); fail as root, else skip."""
    found = shutil.which(program) or next(
        (c for pattern in candidates for c in sorted(glob.glob(pattern)) if os.access(c, os.X_OK)),
        None)
    if found:
        return found
    message = f"{program} is not installed (tests/debian-packages lists its package)"
    if AS_ROOT:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    def accepting() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(accepting, timeout, f"a server on port {port}")


def world_readable_dir(prefix: str) -> Path:
    """A fresh folder under /tmp that nginx's unprivileged workers can traverse."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


# -- nginx ------------------------------------------------------------------------------


@dataclass
class NginxServer:
    """A private nginx: its conf includes every ``*/nginx/vhost.d/*.conf`` under
    ``configs`` (give each server context ``config_path = configs/NAME``)."""

    base: Path
    port: int
    binary: str
    proc: subprocess.Popen[bytes]

    @property
    def conf(self) -> Path:
        return self.base / "nginx.conf"

    @property
    def configs(self) -> Path:
        return self.base / "configs"

    def server_fields(self, name: str) -> list[str]:
        """provision-save options that make a server context use this nginx."""
        return ["--http_service_type", "nginx", "--http_port", str(self.port),
                "--ip_addresses", "127.0.0.1", "--nginx_binary", self.binary,
                "--nginx_conf", str(self.conf),
                "--config_path", str(self.configs / name)]

    def get(self, host: str, path: str = "/") -> tuple[int, str, dict[str, str]]:
        return http_get(self.port, host, path)

    def error_log(self) -> str:
        try:
            return (self.base / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """TERM a server the tests started, then KILL it if it has not gone within 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {base}/nginx.pid;
error_log {base}/error.log notice;
events {{ worker_connections 64; }}
http {{
    {types}
    default_type application/octet-stream;
    access_log off;
    server_names_hash_bucket_size 256;
    client_body_temp_path {base}/tmp/body;
    proxy_temp_path {base}/tmp/proxy;
    fastcgi_temp_path {base}/tmp/fastcgi;
    uwsgi_temp_path {base}/tmp/uwsgi;
    scgi_temp_path {base}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} default_server;
        return 404 "no such site\\n";
    }}
    include {base}/configs/*/nginx/vhost.d/*.conf;
}}
"""


def start_nginx(base: Path, owner: tuple[int, int] | None = None) -> NginxServer:
    """A private nginx in ``base``; with ``owner`` (uid, gid), run as that user, who owns
    ``base`` (a server's back-end user, who reloads it)."""
    binary = need("nginx", "/usr/sbin/nginx")
    port = free_port()
    (base / "tmp").mkdir(parents=True, exist_ok=True)
    (base / "configs").mkdir(exist_ok=True)
    types = ("include /etc/nginx/mime.types;" if os.path.exists("/etc/nginx/mime.types")
             else "types { text/html html; text/plain txt; }")
    # as root, nginx drops its workers to this user: the sites' files must be readable by
    # a stranger, as on a real server
    user = "user nobody nogroup;\n" if AS_ROOT and owner is None else ""
    conf = base / "nginx.conf"
    conf.write_text(NGINX_CONF.format(base=base, port=port, types=types, user=user))
    as_owner: dict[str, Any] = {}
    if owner is not None:
        for path in (base, *base.rglob("*")):
            os.chown(path, *owner)
        as_owner = {"user": owner[0], "group": owner[1], "extra_groups": []}
    proc = subprocess.Popen([binary, "-c", str(conf), "-e", str(base / "error.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, **as_owner)
    server = NginxServer(base, port, binary, proc)
    try:
        wait_port(port)
    except AssertionError:
        server.stop()
        raise AssertionError(f"nginx did not start: {server.error_log()}") from None
    return server


def http_get(port: int, host: str, path: str = "/") -> tuple[int, str, dict[str, str]]:
    """GET http://HOST/PATH from 127.0.0.1:PORT (redirects are not followed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        res = conn.getresponse()
        return res.status, res.read().decode("utf-8", "replace"), dict(res.getheaders())
    finally:
        conn.close()


def expect_answer(nginx: NginxServer, host: str, want: Callable[[int, str], bool],
                what: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    """The site's answer, which must satisfy ``want`` (and have ``headers``) at the first
    request: a task that changed what nginx serves ends only once nginx serves it
    (provision/services/nginx.py), so nothing here waits or asks twice."""
    status, body, got = nginx.get(host)
    ok = want(status, body) and all(got.get(k) == v for k, v in (headers or {}).items())
    assert ok, f"{what}: the answer was {(status, body, got)}"
    return status, body


# -- PostgreSQL -------------------------------------------------------------------------


@dataclass
class PgCluster:
    base: Path
    port: int
    admin: str
    password: str
    bindir: str
    user: str

    def server_fields(self) -> list[str]:
        return ["--db_service_type", "pgsql", "--db_host", "127.0.0.1",
                "--db_port", str(self.port), "--db_user", self.admin,
                "--db_passwd", self.password]

    def psql(self, sql: str, database: str = "postgres", user: str | None = None,
             password: str | None = None) -> list[str]:
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(self.port),
               "PGUSER": user or self.admin, "PGPASSWORD": password or self.password,
               "PGDATABASE": database}
        res = subprocess.run([f"{self.bindir}/psql", "-X", "-A", "-t", "-q",
                              "-v", "ON_ERROR_STOP=1"], input=sql, env=env,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return [line for line in res.stdout.splitlines() if line]

    def databases(self) -> set[str]:
        return set(self.psql("SELECT datname FROM pg_database WHERE NOT datistemplate"))

    def restart(self, mode: str = "fast") -> None:
        """pg_ctl restart (fast: every session is cut; immediate: a crash, what was not
        written out of its WAL buffers is lost), its output to its log."""
        res = subprocess.run([f"{self.bindir}/pg_ctl", "-D", str(self.base / "data"), "-l",
                              str(self.base / "log"), "-m", mode, "-w", "restart"],
                             user=self.user, capture_output=True, text=True, timeout=120,
                             cwd="/")
        assert res.returncode == 0, res.stdout + res.stderr

    def roles(self) -> set[str]:
        return set(self.psql("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'"))

    def stop(self) -> None:
        subprocess.run([f"{self.bindir}/pg_ctl", "-D", str(self.base / "data"), "-m",
                        "immediate", "stop"], user=self.user, capture_output=True,
                       timeout=60, cwd="/")
        shutil.rmtree(self.base.parent, ignore_errors=True)


def start_postgres() -> PgCluster:
    """A cluster in a fresh folder under /tmp (its user must reach it: pytest's own
    temporary folders are private to root)."""
    base = world_readable_dir("hostctl-pg-") / "pg"
    initdb = need("initdb", "/usr/lib/postgresql/*/bin/initdb")
    bindir = os.path.dirname(os.path.realpath(initdb))
    need("psql", "/usr/lib/postgresql/*/bin/psql")
    user = "postgres" if AS_ROOT else pwd.getpwuid(os.getuid()).pw_name
    if AS_ROOT:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.fail("the postgres user is missing (Debian's postgresql package makes it)")
    base.mkdir(parents=True, exist_ok=True)
    entry = pwd.getpwnam(user)
    os.chown(base, entry.pw_uid, entry.pw_gid)
    base.chmod(0o700)
    password = "admin-Pa55-" + os.urandom(6).hex()
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    pwfile.chmod(0o600)
    port = free_port()
    run = {"user": user, "capture_output": True, "text": True, "timeout": 120, "cwd": "/"}
    res = subprocess.run([initdb, "-D", str(base / "data"), "-U", "admin",
                          "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                          "--no-sync"], **run)  # type: ignore[call-overload]
    assert res.returncode == 0, res.stdout + res.stderr
    (base / "sock").mkdir()
    os.chown(base / "sock", entry.pw_uid, entry.pw_gid)
    options = (f"-p {port} -k {base / 'sock'} -c listen_addresses=127.0.0.1 "
               "-c fsync=off -c log_statement=all")
    res = subprocess.run([f"{bindir}/pg_ctl", "-D", str(base / "data"), "-l",
                          str(base / "log"), "-o", options, "-w", "start"],
                         **run)  # type: ignore[call-overload]
    assert res.returncode == 0, res.stdout + res.stderr
    cluster = PgCluster(base, port, "admin", password, bindir, user)
    wait_port(port)
    return cluster


# -- MariaDB ----------------------------------------------------------------------------


@dataclass
class MariadbServer:
    base: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.base / "sock" / "mysqld.sock"

    def server_fields(self) -> list[str]:
        """As Debian sets it up: the socket (its folder), root by unix_socket, no password."""
        return ["--db_service_type", "mariadb", "--db_host", str(self.socket.parent),
                "--db_port", str(self.port)]

    def sql(self, statement: str, database: str = "") -> list[str]:
        res = subprocess.run(["mariadb", f"--socket={self.socket}", "--batch",
                              "--skip-column-names", *([database] if database else [])],
                             input=statement, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return [line for line in res.stdout.splitlines() if line]

    def databases(self) -> set[str]:
        return set(self.sql("SHOW DATABASES;"))

    def users(self) -> set[str]:
        return set(self.sql("SELECT CONCAT(user, '@', host) FROM mysql.user;"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


def start_mariadb() -> MariadbServer:
    """A private MariaDB: its data, socket and TCP port (loopback) in a fresh folder, run
    as Debian's mysql user (as root) or the test's own user."""
    install = need("mariadb-install-db", "/usr/bin/mariadb-install-db")
    server = need("mariadbd", "/usr/sbin/mariadbd")
    base = world_readable_dir("hostctl-my-")
    user = "mysql" if AS_ROOT else pwd.getpwuid(os.getuid()).pw_name
    entry = pwd.getpwnam(user)
    for sub in ("data", "sock", "tmp"):
        (base / sub).mkdir()
        os.chown(base / sub, entry.pw_uid, entry.pw_gid)
    (base / "sock").chmod(0o755)
    res = subprocess.run([install, f"--datadir={base / 'data'}", f"--user={user}",
                          "--auth-root-authentication-method=socket", "--skip-test-db"],
                         capture_output=True, text=True, timeout=300, cwd="/")
    assert res.returncode == 0, res.stdout + res.stderr
    port = free_port()
    proc = subprocess.Popen(
        [server, "--no-defaults", f"--datadir={base / 'data'}", f"--user={user}",
         f"--socket={base / 'sock' / 'mysqld.sock'}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--tmpdir={base / 'tmp'}", "--skip-log-bin",
         f"--pid-file={base / 'data' / 'mysqld.pid'}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    running = MariadbServer(base, port, proc)
    try:
        wait_port(port, timeout=120)
    except AssertionError:
        running.stop()
        raise
    return running


# -- platforms --------------------------------------------------------------------------

#: an application for the tests: its install command writes the site's page (with the
#: database it was given) and a table with rows; its cron and login-link commands leave
#: traces; a flag file can hold the install (to look at the processes meanwhile) or make
#: it fail
APP = r'''
import json, os, sqlite3, subprocess, sys, time
step = sys.argv[1]
site_path = os.environ["HOSTCTL_FIELD_SITE_PATH"]
uri = os.environ["HOSTCTL_FIELD_URI"]
flags = os.environ.get("APP_FLAGS", "")

def sql(statements):
    kind = os.environ["DB_TYPE"]
    if kind == "sqlite":
        with sqlite3.connect(os.environ["DB_PATH"]) as db:
            return [list(r) for s in statements for r in db.execute(s).fetchall()]
    if kind == "mariadb":  # the password in an option file, as a PHP application's config
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            cnf = os.path.join(tmp, "my.cnf")
            where = (f"socket={os.environ['DB_PATH']}" if os.environ["DB_PATH"] else
                     f"host={os.environ['DB_HOST']}\nport={os.environ['DB_PORT']}")
            with open(os.open(cnf, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
                fh.write(f"[client]\nuser={os.environ['DB_USER']}\n"
                         f"password={os.environ['DB_PASSWD']}\n{where}\n")
            out = subprocess.run(["mariadb", f"--defaults-extra-file={cnf}", "--batch",
                                  "--skip-column-names", os.environ["DB_NAME"]],
                                 input="\n".join(statements), capture_output=True, text=True)
        if out.returncode:
            sys.exit("mariadb: " + out.stderr)
        return [line.split("\t") for line in out.stdout.splitlines() if line]
    out = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"],
                         input="\n".join(statements), capture_output=True, text=True,
                         env={**os.environ, "PGHOST": os.environ["DB_HOST"],
                              "PGPORT": os.environ["DB_PORT"], "PGUSER": os.environ["DB_USER"],
                              "PGPASSWORD": os.environ["DB_PASSWD"],
                              "PGDATABASE": os.environ["DB_NAME"]})
    if out.returncode:
        sys.exit("psql: " + out.stderr)
    return [line.split("|") for line in out.stdout.splitlines() if line]

if step == "install":
    print("installing", uri, "with database", os.environ.get("DB_NAME"), flush=True)
    if flags and os.path.exists(flags + ".hold"):
        open(flags + ".held", "w").close()
        while not os.path.exists(flags + ".go"):
            time.sleep(0.05)
    if os.environ.get("APP_PRINT_SECRET"):
        print("the password is", os.environ["DB_PASSWD"], flush=True)
    if os.environ["DB_TYPE"] != "none":
        key = {"sqlite": "INTEGER PRIMARY KEY",
               "mariadb": "INTEGER PRIMARY KEY AUTO_INCREMENT"}.get(
                   os.environ["DB_TYPE"], "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        sql([f"CREATE TABLE notes (id {key}, body TEXT);",
             "INSERT INTO notes (body) VALUES ('first note');",
             "INSERT INTO notes (body) VALUES ('second note');"])
    public = os.path.join(site_path, "public")
    os.makedirs(public, exist_ok=True)
    with open(os.path.join(public, "index.html"), "w") as fh:
        fh.write(f"<h1>Welcome to {uri}</h1>\n<p>database {os.environ.get('DB_NAME')}</p>\n")
    if flags and os.path.exists(flags + ".fail"):
        sys.exit("install failed on purpose")
elif step == "cron":
    with open(os.path.join(site_path, "cron.log"), "a") as fh:
        fh.write(f"cron ran for {uri}\n")
    print("cron done for", uri)
elif step == "login":
    print("making a link")
    print(f"http://{uri}/login/one-time-" + os.environ["HOSTCTL_TASK_ID"])
'''


def make_platform(root: Path, *, web_root: str = "{site_path}/public",
                  commands: Sequence[str] = ("install", "cron", "login_link"),
                  env: Mapping[str, str] | None = None, marker: str = "",
                  interpreter: str = sys.executable) -> Path:
    """A platform root with the test application and its hostctl-app.toml (its commands
    run by ``interpreter``: another user may not reach this one)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "app.py").write_text(APP)
    steps = {"install": "install", "cron": "cron", "login_link": "login"}
    manifest: dict[str, Any] = {
        "format": 1,
        "web": {"root": web_root, "index": ["index.html"]},
        "commands": {name: [interpreter, "{root}/app.py", steps[name]]
                     for name in commands},
    }
    if env:
        manifest["env"] = dict(env)
    (root / "hostctl-app.toml").write_text(tomli_w.dumps(manifest))
    if marker:
        (root / "marker.txt").write_text(marker)
    return root


def sqlite_rows(path: str | Path, table: str = "notes") -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def secrets_of(home: Path, site: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads((home / "secrets" / f"{site.lstrip('@')}.toml").read_text())


def tree(path: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under ``path``: its mode, and a file's content."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for entry in sorted(path.rglob("*")):
        st = entry.lstat()
        rel = str(entry.relative_to(path))
        out[rel] = (st.st_mode, entry.read_bytes() if entry.is_file() else None)
    return out


def task_doc(run: Callable[..., Any], task_id: str) -> dict[str, Any]:
    res = run("task", "show", task_id, "--json")
    assert res.code == 0, res
    doc = json.loads(res.out)
    assert isinstance(doc, dict)
    return doc


def last_task(run: Callable[..., Any], ttype: str, context: str) -> dict[str, Any]:
    res = run("task", "list", "--json", "--context", context)
    assert res.code == 0, res
    found = [t for t in json.loads(res.out) if t["type"] == ttype]
    assert found, (ttype, context, res.out)
    return found[0]  # newest first


# -- a home with a server, platforms and sites -------------------------------------------


class Lab:
    """One test's home: contexts saved and tasks run through ``run_hostctl``, in the
    foreground (provision-TYPE) or through the queue (task add, then wait-queue --once)."""

    def __init__(self, run: Callable[..., Any], home: Path, www: Path,
                 nginx: NginxServer | None = None, name: str = "lab") -> None:
        self.run, self.home, self.www, self.nginx, self.name = run, home, www, nginx, name

    def close(self) -> None:
        """Take this lab's vhosts out of the shared nginx's include folders: two labs'
        sites may have the same host name, which nginx would refuse as a conflict."""
        if self.nginx is not None:
            for folder in self.nginx.configs.glob(f"{self.name}-*"):
                shutil.rmtree(folder, ignore_errors=True)

    def ok(self, *argv: str) -> Any:
        res = self.run(*argv)
        assert res.code == 0, (argv, res)
        return res

    def save(self, name: str, *fields: str) -> None:
        self.ok("provision-save", name, *fields)

    def server(self, name: str = "@srv", *fields: str, db: str = "sqlite") -> str:
        web = self.nginx.server_fields(f"{self.name}-{name.lstrip('@')}") if self.nginx \
            else ["--http_service_type", "none"]
        self.save(name, "--context_type", "server", *web, "--db_service_type", db, *fields)
        return name

    def platform(self, name: str = "@plat", server: str = "@srv", **app: Any) -> Path:
        root = make_platform(self.www / name.lstrip("@"), **app)
        self.save(name, "--context_type", "platform", "--root", str(root), "--web_server",
                  server)
        return root

    def site(self, name: str, platform: str = "@plat", *fields: str) -> str:
        self.save(name, "--context_type", "site", "--platform", platform, *fields)
        return name

    def task(self, ttype: str, context: str, mode: str = "foreground",
             **options: str) -> dict[str, Any]:
        """Run a task; return its ``task show --json`` document (any status)."""
        if mode == "foreground":
            argv = [f"provision-{ttype}", context]
            for key, value in options.items():
                argv += [f"--{key}", value]
            self.run(*argv)
            return last_task(self.run, ttype, context)
        extra = [x for k, v in options.items() for x in ("--option", f"{k}={v}")]
        res = self.run("task", "add", ttype, context, *extra)
        assert res.code == 0, res
        task_id = res.out.strip()
        self.ok("wait-queue", "--once")
        return task_doc(self.run, task_id)

    def must(self, ttype: str, context: str, mode: str = "foreground",
             status: str = "success", **options: str) -> dict[str, Any]:
        doc = self.task(ttype, context, mode, **options)
        assert doc["status"] == status, (ttype, context, doc, self.log(doc["id"]))
        return doc

    def log(self, task_id: str) -> str:
        res = self.run("task", "log", task_id)
        return str(res.out)

    def context_file(self, name: str) -> Path:
        return self.home / "contexts" / f"{name.lstrip('@')}.toml"

    def secrets(self, name: str) -> Path:
        return self.home / "secrets" / f"{name.lstrip('@')}.toml"

    def vhost(self, server: str, site: str) -> Path:
        assert self.nginx is not None
        return (self.nginx.configs / f"{self.name}-{server.lstrip('@')}" / "nginx" /
                "vhost.d" / f"{site.lstrip('@')}.conf")


# -- PHP-FPM and the privileged helper --------------------------------------------------


@dataclass
class PhpFpm:
    """A private php-fpm master (as root) whose pools hostctl's privileged helper writes,
    and the helper's settings file (root's, in a folder only root may write)."""

    base: Path
    settings: Path
    pool_dir: Path
    socket_dir: Path
    proc: subprocess.Popen[bytes]

    def server_fields(self) -> list[str]:
        return ["--php_service_type", "php-fpm", "--privileged_settings", str(self.settings)]

    def log(self) -> str:
        try:
            return (self.base / "fpm.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.base, ignore_errors=True)


FPM_CONF = """\
[global]
pid = {base}/fpm.pid
error_log = {base}/fpm.log
daemonize = no
; php-fpm wants one pool before hostctl has written any
[_idle]
user = nobody
group = nogroup
listen = {base}/idle.sock
pm = ondemand
pm.max_children = 1
include = {base}/pool.d/*.conf
"""


def php_fpm_binary() -> str:
    return need("php-fpm", "/usr/sbin/php-fpm*")


def start_php_fpm(site_roots: Sequence[Path], *, backend_user: str = "root",
                  web_user: str = "nobody", prefix: str = "hst") -> PhpFpm:
    """php-fpm and the helper's settings: sites in ``site_roots``, the back end
    ``backend_user``, the web server's workers ``web_user`` (the test nginx's)."""
    import tempfile

    if not AS_ROOT:
        pytest.skip("PHP sites need root: php-fpm's master switches to each site's user")
    binary = php_fpm_binary()
    base = Path(tempfile.mkdtemp(prefix="hostctl-fpm-"))
    base.chmod(0o755)  # root's, and no one else may write it: the helper trusts it
    (base / "pool.d").mkdir(mode=0o755)
    (base / "fpm.conf").write_text(FPM_CONF.format(base=base))
    # each test module its own prefix: users of two modules never meet
    unique = prefix + os.urandom(2).hex()[:3] + "-"
    settings = base / "privileged.toml"
    settings.write_text(tomli_w.dumps({
        "backend_user": backend_user, "user_prefix": unique, "web_user": web_user,
        "site_roots": [str(r) for r in site_roots], "fpm_pool_dir": str(base / "pool.d"),
        "fpm_socket_dir": str(base / "sock"),
        "fpm_test": [binary, "-t", "-y", str(base / "fpm.conf")],
        "fpm_pid_file": str(base / "fpm.pid")}))
    settings.chmod(0o644)
    proc = subprocess.Popen([binary, "-F", "-y", str(base / "fpm.conf")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    server = PhpFpm(base, settings, base / "pool.d", base / "sock", proc)
    wait_for(lambda: (base / "fpm.pid").exists() and (base / "idle.sock").exists(), 30,
             "php-fpm to start")
    return server


def site_users(prefix: str) -> list[str]:
    """The UNIX users whose names start with ``prefix``."""
    return sorted(p.pw_name for p in pwd.getpwall() if p.pw_name.startswith(prefix))


def remove_site_users(prefix: str) -> None:
    """Remove what a test left of its site users (a failed test's)."""
    for name in site_users(prefix):
        subprocess.run(["userdel", name], capture_output=True, timeout=60)
        subprocess.run(["groupdel", name], capture_output=True, timeout=60)


#: a Drupal-shaped PHP application (tests/phpapp): a front controller, a settings file it
#: includes (sites/URI/settings.php, written by hostctl), a files folder it writes, a cron
#: script run by the cron task
PHP_APP = Path(__file__).with_name("phpapp")


def make_php_platform(root: Path, *, writable: Sequence[str] = ("files",),
                      settings_env: bool = False) -> Path:
    """A platform root with the Drupal-shaped PHP application and its manifest."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    for name in ("index.php", "install.php"):
        shutil.copyfile(PHP_APP / name, root / name)
        (root / name).chmod(0o644)
    php = need("php", "/usr/bin/php*")
    manifest = {
        "format": 1,
        "web": {"root": "{root}", "php": True, "front_controller": "index.php",
                "deny": ["*.inc", "install.php"]},
        "site": {"writable": list(writable)},
        "settings": {"file": "settings.php", "format": "php", "env": settings_env},
        "commands": {"install": [php, "{root}/install.php"],
                     "cron": [php, "{root}/install.php", "cron"]},
    }
    (root / "hostctl-app.toml").write_text(tomli_w.dumps(manifest))
    return root
