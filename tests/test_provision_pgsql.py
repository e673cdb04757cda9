"""Sites on a real PostgreSQL (a private cluster made with initdb and run with pg_ctl as
an unprivileged user, on a loopback port): install, backup and restore row for row,
clone with separate databases, migrate to another database server, undo of a failing
or cancelled install; secrets never in task logs, context show, or any process's command
line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import (
    Lab,
    PgCluster,
    secrets_of,
    start_postgres,
    tree,
    world_readable_dir,
)
from taskhelpers import hostctl_cmd, wait_for


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = start_postgres()
    yield cluster
    cluster.stop()


@pytest.fixture
def lab(run_hostctl, home: Path, pg: PgCluster) -> Lab:
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-www-"))
    lab.server("@db", *pg.server_fields()[2:], db="pgsql")
    lab.platform("@plat", "@db")
    return lab


def rows(pg: PgCluster, home: Path, site: str) -> list[str]:
    db = secrets_of(home, site)["db"]
    return pg.psql("SELECT id, body FROM notes ORDER BY id", database=db["name"],
                   user=db["user"], password=db["password"])


def test_install_backup_change_restore_row_for_row(lab: Lab, pg: PgCluster) -> None:
    site = lab.site("@pg.example")
    result = lab.must("install", site)["result"]
    assert (result["db_type"], result["db_name"]) == ("pgsql", "pgexample")
    db = secrets_of(lab.home, site)["db"]
    assert (db["type"], db["server"], db["name"], db["user"]) == (
        "pgsql", "@db", "pgexample", "pgexample")
    assert "pgexample" in pg.databases() and "pgexample" in pg.roles()
    before = rows(pg, lab.home, site)
    assert before == ["1|first note", "2|second note"]
    site_path = lab.www / "plat" / "sites" / "pg.example"
    (site_path / "upload.bin").write_bytes(os.urandom(50_000))
    files = tree(site_path)

    made = lab.must("backup", site)["result"]["file"]
    pg.psql("DELETE FROM notes WHERE id = 2; INSERT INTO notes (body) VALUES ('later');"
            "CREATE TABLE extra (x int);", database=db["name"], user=db["user"],
            password=db["password"])
    (site_path / "upload.bin").write_bytes(b"changed")
    assert rows(pg, lab.home, site) != before

    lab.must("restore", site, file=Path(made).name)
    assert rows(pg, lab.home, site) == before
    assert pg.psql("SELECT to_regclass('public.extra') IS NULL", database=db["name"],
                   user=db["user"], password=db["password"]) == ["t"]
    assert tree(site_path) == files
    assert not {n for n in pg.databases() if "__" in n}  # no load or old copy left
    lab.must("verify", site)

    lab.must("disable", site)
    lab.must("delete", site)
    assert "pgexample" not in pg.databases() and "pgexample" not in pg.roles()


def test_clone_has_its_own_database_and_role(lab: Lab, pg: PgCluster) -> None:
    site = lab.site("@orig.example")
    lab.must("install", site)
    lab.must("clone", site, new_uri="copy.example")
    orig, copy = secrets_of(lab.home, site)["db"], secrets_of(lab.home, "@copy.example")["db"]
    assert orig["name"] != copy["name"] and orig["password"] != copy["password"]
    assert rows(pg, lab.home, "@copy.example") == rows(pg, lab.home, site)
    pg.psql("INSERT INTO notes (body) VALUES ('copy only')", database=copy["name"],
            user=copy["user"], password=copy["password"])
    assert len(rows(pg, lab.home, "@copy.example")) == 3
    assert len(rows(pg, lab.home, site)) == 2
    with pytest.raises(AssertionError, match="permission denied"):
        pg.psql("SELECT 1", database=orig["name"], user=copy["user"],
                password=copy["password"])


def test_migrate_to_another_database_server(lab: Lab, pg: PgCluster) -> None:
    site = lab.site("@move.example")
    lab.must("install", site)
    old = secrets_of(lab.home, site)["db"]
    # another server context for the same cluster: another database server to hostctl
    lab.server("@db2", *pg.server_fields()[2:], db="pgsql")
    lab.must("migrate", site, db_server="@db2")
    new = secrets_of(lab.home, site)["db"]
    assert new["server"] == "@db2" and new["name"] != old["name"]
    assert rows(pg, lab.home, site) == ["1|first note", "2|second note"]
    assert old["name"] not in pg.databases() and old["user"] not in pg.roles()
    lab.save("@sqlite", "--context_type", "server", "--db_service_type", "sqlite")
    doc = lab.task("migrate", site, db_server="@sqlite")
    assert doc["status"] == "error"
    assert "cannot move a pgsql database to a sqlite server" in doc["result"]["error"]


def test_failing_install_drops_what_it_made(lab: Lab, pg: PgCluster, tmp_path: Path) -> None:
    (tmp_path / "flags.fail").touch()
    lab.platform("@failing", "@db", env={"APP_FLAGS": str(tmp_path / "flags")})
    site = lab.site("@fail.example", "@failing")
    databases, roles = pg.databases(), pg.roles()
    doc = lab.task("install", site)
    assert doc["status"] == "error"
    assert pg.databases() == databases and pg.roles() == roles
    assert not (lab.www / "failing" / "sites").exists()
    assert not lab.secrets(site).exists()


def start_held_install(lab: Lab, tmp_path: Path, site: str, **env: str) -> tuple[
        subprocess.Popen[bytes], str, Path]:
    """Queue an install whose platform command waits for a flag file, and start a
    wait-queue that runs it; return the daemon, the task id and the flags' stem."""
    flags = tmp_path / "flags"
    (tmp_path / "flags.hold").touch()
    lab.platform("@held", "@db", env={"APP_FLAGS": str(flags), **env})
    lab.site(site, "@held")
    task_id = lab.ok("task", "add", "install", site).out.strip()
    proc = subprocess.Popen([*hostctl_cmd(), "wait-queue", "--once"],
                            env={**os.environ, "HOSTCTL_HOME": str(lab.home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for(lambda: (tmp_path / "flags.held").exists() or proc.poll() is not None, 60,
             "the install command to start")
    assert proc.poll() is None, "wait-queue ended before the install command held"
    return proc, task_id, flags


def command_lines() -> dict[int, bytes]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                pass
    return found


def test_secrets_stay_out_of_logs_context_and_command_lines(
        lab: Lab, pg: PgCluster, tmp_path: Path) -> None:
    site = "@secret.example"
    proc, task_id, flags = start_held_install(lab, tmp_path, site, APP_PRINT_SECRET="1")
    try:
        password = secrets_of(lab.home, site)["db"]["password"]
        lines = command_lines()
        # the task's own processes are among them: the worker, its child, the command
        assert any(b"app.py\x00install" in line for line in lines.values())
        for pid, line in lines.items():
            assert password.encode() not in line, (pid, line)
            assert pg.password.encode() not in line, (pid, line)
        Path(f"{flags}.go").touch()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    doc = json.loads(lab.ok("task", "show", task_id, "--json").out)
    assert doc["status"] == "success", lab.log(task_id)
    log = lab.log(task_id)
    assert "the password is [secret]" in log  # the command printed it: redacted
    for text in (log, json.dumps(doc), lab.ok("context", "show", site, "--json").out,
                 lab.ok("context", "show", site).out, lab.context_file(site).read_text(),
                 lab.ok("context", "show", "@db", "--json").out):
        assert password not in text
        assert pg.password not in text
    assert (lab.secrets(site).stat().st_mode & 0o777) == 0o600
    assert (lab.secrets(site).parent.stat().st_mode & 0o777) == 0o700
    # the later tasks know the site's password from its secrets file
    backup = lab.must("backup", site)
    assert password not in lab.log(backup["id"])
    assert pg.psql("SELECT count(*) FROM notes", database=secrets_of(lab.home, site)["db"][
        "name"], user="secretexample", password=password) == ["2"]


def test_a_cancelled_install_is_undone(lab: Lab, pg: PgCluster, tmp_path: Path) -> None:
    databases, roles = pg.databases(), pg.roles()
    proc, task_id, _ = start_held_install(lab, tmp_path, "@stop.example")
    try:
        assert "stopexample" in pg.databases()
        res = lab.run("task", "cancel", task_id)
        assert res.code == 0, res
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    doc = json.loads(lab.ok("task", "show", task_id, "--json").out)
    assert doc["status"] == "cancelled"
    log = lab.log(task_id)
    assert "undone: the database stopexample" in log, log
    assert pg.databases() == databases and pg.roles() == roles
    assert not (lab.www / "held" / "sites").exists()
    assert not lab.secrets("@stop.example").exists()


def test_no_host_and_no_password_means_the_local_socket_and_peer_auth(
        run_hostctl, home: Path, pg: PgCluster) -> None:
    """As Debian sets PostgreSQL up: the back end's own user, through the socket, with
    peer authentication; sites still connect with their role's password over TCP."""
    import getpass

    me = getpass.getuser()
    hba = pg.base / "data" / "pg_hba.conf"
    rules = hba.read_text()
    if f"local all {me} peer" not in rules:
        hba.write_text(f"local all {me} peer\n" + rules)
        pg.psql(f'CREATE ROLE "{me}" LOGIN CREATEDB CREATEROLE;')
        pg.psql("SELECT pg_reload_conf();")
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-www-"))
    # the socket's folder (libpq's default folder on a Debian host: no db_host at all)
    lab.server("@local", "--db_host", str(pg.base / "sock"), "--db_port", str(pg.port),
               db="pgsql")
    lab.platform("@plat", "@local")
    site = lab.site("@peer.example")
    result = lab.must("install", site)["result"]
    assert result["db_name"] == "peerexample" and "peerexample" in pg.databases()
    assert rows(pg, lab.home, site) == ["1|first note", "2|second note"]  # the site's role
    owner = pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database "
                    "WHERE datname = 'peerexample'")
    assert owner == ["peerexample"]
    lab.must("backup", site)
    lab.must("disable", site)
    lab.must("delete", site)
    assert "peerexample" not in pg.databases() and "peerexample" not in pg.roles()


def test_an_unset_db_host_makes_no_tcp_connection(home: Path, run_hostctl) -> None:
    from hostctl.contexts.store import TomlStore
    from hostctl.paths import Paths
    from hostctl.provision.services.pgsql import Pgsql

    assert run_hostctl("provision-save", "@d", "--context_type", "server",
                       "--db_service_type", "pgsql").code == 0
    store = TomlStore(Paths(home))
    server = Pgsql(store.get("@d"), Paths(home))
    assert "PGHOST" not in server._admin() and "PGUSER" not in server._admin()
    assert run_hostctl("provision-save", "@d", "--db_passwd", "@@x-Pa55word").code == 0
    server = Pgsql(store.get("@d"), Paths(home))
    assert server._admin()["PGHOST"] == "localhost" and server._admin()["PGUSER"] == "postgres"
