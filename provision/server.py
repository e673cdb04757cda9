"""The server task: verify.

It makes the home's folders (Aegir's: backups 0700, config 0711, and hostctl's secrets
0700), looks for each service's programs (a missing one is a warning), creates and drops
a test database on the database service, and tests the web server's configuration
(``nginx -t``) with hostctl's vhost folder in place.
"""

from __future__ import annotations

from pathlib import Path

from hostctl.errors import OperationFailed
from hostctl.provision import layout
from hostctl.provision.checks import Checks
from hostctl.provision.job import Job
from hostctl.provision.services import database, web
from hostctl.provision.services.nginx import DEFAULT_BINARY
from hostctl.provision.services.pgsql import client
from hostctl.provision.tasktype import RunContext


def verify(rc: RunContext) -> int:
    job = Job(rc)
    checks = Checks(job)
    server = rc.context
    job.result["context"] = server.display_name
    checks.folder(rc.paths.home, "home")
    checks.folder(layout.backups_dir(rc.paths), "backups folder", mode=0o700)
    checks.folder(layout.secrets_dir(rc.paths), "secrets folder", mode=0o700)
    config = layout.server_config_dir(rc.paths, server)
    if config.is_relative_to(rc.paths.home):
        checks.folder(config.parent, "config folder", mode=0o711)
    checks.folder(config, "server config folder", mode=0o711)
    for key in ("backup_path", "include_path", "clients_path"):
        value = server.get(key)
        if isinstance(value, str):
            checks.folder(Path(value), key, mode=0o711 if key != "backup_path" else 0o700)

    nginx = checks.attempt("http service", lambda: web(server, rc.paths))
    if nginx is not None:
        checks.folder(nginx.config_dir, "nginx config folder", mode=0o755)
        checks.folder(nginx.vhost_dir, "vhost folder", mode=0o755)
        job.result["vhost_dir"] = str(nginx.vhost_dir)
        job.result["include"] = nginx.include_line()
        job.say(f"the server's nginx.conf includes the vhosts with: {nginx.include_line()}")
        binary = checks.program("http service nginx", nginx.binary(),
                                f"nginx_binary, PATH, {DEFAULT_BINARY}")
        if binary is not None:
            tested = checks.attempt("nginx -t", lambda: nginx.test(job, binary))
            if tested is not None:
                checks.record(True, f"nginx -t: {tested}")
    elif str(server.get("http_service_type")) == "none":
        checks.record(True, "http service: none")

    db = checks.attempt("db service", lambda: database(server, rc.paths))
    if db is not None:
        runnable = True
        if db.type == "pgsql":
            for program in ("psql", "pg_dump"):
                found = checks.program(f"db service pgsql: {program}", _client(program),
                                       "PATH, /usr/lib/postgresql/*/bin")
                runnable = runnable and found is not None
        if runnable:
            tested = checks.attempt(f"db service {db.type}", lambda: db.test(job))
            if tested is not None:
                checks.record(True, f"db service {db.type}: test database created and "
                                    f"dropped ({tested})")
    elif str(server.get("db_service_type")) == "none":
        checks.record(True, "db service: none")
    return checks.code()


def _client(program: str) -> str | None:
    try:
        return client(program)
    except OperationFailed:
        return None
