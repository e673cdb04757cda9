"""The services layer against real services: SQLite files, a private PostgreSQL cluster
(initdb, pg_ctl, as an unprivileged user) and a private nginx on a loopback port."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import (
    NginxServer,
    PgCluster,
    expect_answer,
    start_nginx,
    start_postgres,
    world_readable_dir,
)

from hostctl.contexts.store import TomlStore
from hostctl.errors import InvalidInput, OperationFailed
from hostctl.paths import Paths
from hostctl.provision.job import Job
from hostctl.provision.services import database, suggest_name, web
from hostctl.provision.services.nginx import Vhost
from hostctl.provision.services.pgsql import scram_verifier
from hostctl.provision.tasktype import RunContext


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = start_postgres()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def nginx() -> Iterator[NginxServer]:
    base = world_readable_dir("hostctl-nginx-")
    server = start_nginx(base)
    yield server
    server.stop()


def job_for(home: Path, name: str, *fields: str, context_type: str = "server") -> Job:
    from hostctl.cli.main import main

    assert main(["--home", str(home), "provision-save", name, "--context_type",
                 context_type, *fields]) == 0
    paths = Paths(home)
    store = TomlStore(paths)
    return Job(RunContext("t1", "test", store.get(name), {}, paths, store))


# -- PostgreSQL -------------------------------------------------------------------------


def test_pgsql_database_lifecycle(home: Path, pg: PgCluster, tmp_path: Path) -> None:
    job = job_for(home, "@db", *pg.server_fields())
    db = database(job.rc.context, job.paths)
    assert db is not None and db.type == "pgsql"
    assert "PostgreSQL" in db.test(job)
    assert not any(n.startswith("hostctl_verify") for n in pg.databases())

    name = suggest_name(job, db, "www.Life-Cycle.example")
    assert name == "lifecycleexample"[:16]
    creds = db.create(job, name)
    assert (creds.name, creds.user) == (name, name) and len(creds.password) >= 32
    assert name in pg.databases() and name in pg.roles()
    assert db.taken(job, name) and db.exists(job, creds)
    assert suggest_name(job, db, "www.Life-Cycle.example") == f"{name}_2"
    # the role logs in with its password; the server holds only a SCRAM verifier, and
    # the statement log (log_statement = all) never saw the password
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');",
            database=name, user=creds.user, password=creds.password)
    stored = pg.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{name}'")
    assert stored[0].startswith("SCRAM-SHA-256$4096:")
    assert creds.password not in (pg.base / "log").read_text()
    # nobody else may connect to it
    other = db.create(job, suggest_name(job, db, "other.example"))
    with pytest.raises(AssertionError, match="permission denied"):
        pg.psql("SELECT 1", database=name, user=other.user, password=other.password)

    dump = tmp_path / "dump.sql"
    db.dump(job, creds, dump)
    assert (dump.stat().st_mode & 0o777) == 0o600 and b"1\tone\n" in dump.read_bytes()
    pg.psql("INSERT INTO t VALUES (2, 'two'); UPDATE t SET v = 'changed' WHERE id = 1;",
            database=name, user=creds.user, password=creds.password)
    db.load(job, creds, dump)
    rows = pg.psql("SELECT id, v FROM t ORDER BY id", database=name, user=creds.user,
                   password=creds.password)
    assert rows == ["1|one"]
    assert not {f"{name}__load", f"{name}__old"} & pg.databases()

    # a dump that fails half-way leaves the database as it was
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE u (x int);\nINSERT INTO nowhere VALUES (1);\n")
    with pytest.raises(OperationFailed, match="loading bad.sql"):
        db.load(job, creds, bad)
    assert pg.psql("SELECT id, v FROM t", database=name, user=creds.user,
                   password=creds.password) == ["1|one"]
    assert f"{name}__load" not in pg.databases()

    db.drop(job, creds)
    db.drop(job, other)
    assert name not in pg.databases() and name not in pg.roles()
    assert other.name not in pg.databases()
    db.drop(job, creds)  # gone already: fine


def test_scram_verifier_is_postgresqls() -> None:
    # RFC 7677's example: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==
    import base64

    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_verifier("pencil", salt, 4096)
    assert verifier == ("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
                        "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
                        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")


def test_pgsql_wrong_admin_password_is_one_clear_error(home: Path, pg: PgCluster) -> None:
    fields = pg.server_fields()
    fields[fields.index("--db_passwd") + 1] = "wrong-password"
    job = job_for(home, "@db", *fields)
    db = database(job.rc.context, job.paths)
    assert db is not None
    with pytest.raises(OperationFailed, match="password authentication failed") as err:
        db.test(job)
    assert "wrong-password" not in err.value.message


# -- SQLite -----------------------------------------------------------------------------


def test_sqlite_database_lifecycle(home: Path, tmp_path: Path) -> None:
    job = job_for(home, "@srv", "--db_service_type", "sqlite")
    db = database(job.rc.context, job.paths)
    assert db is not None and db.type == "sqlite"
    assert "SQLite" in db.test(job)
    creds = db.create(job, suggest_name(job, db, "a.example"))
    path = Path(creds.path)
    assert path == home / "databases" / "srv" / "aexample.sqlite"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert suggest_name(job, db, "a.example") == "aexample_2"
    with pytest.raises(OperationFailed, match="exists already"):
        db.create(job, "aexample")
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        con.executemany("INSERT INTO t (v) VALUES (?)", [("one",), ("two",)])
    dump = tmp_path / "dump.sqlite"
    db.dump(job, creds, dump)
    with sqlite3.connect(path) as con:
        con.execute("DELETE FROM t WHERE id = 1")
        con.execute("INSERT INTO t (v) VALUES ('three')")
    db.load(job, creds, dump)
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT * FROM t ORDER BY id").fetchall() == [(1, "one"),
                                                                         (2, "two")]
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(OperationFailed):
        db.load(job, creds, bad)
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (2,)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    db.drop(job, creds)
    assert not path.exists()


def test_unsupported_services_are_refused_and_mysql_is_mariadb(home: Path) -> None:
    job = job_for(home, "@srv", "--db_service_type", "mysql", "--http_service_type",
                  "apache")
    assert getattr(database(job.rc.context, job.paths), "type", None) == "mariadb"
    with pytest.raises(InvalidInput, match="apache web service is not supported"):
        web(job.rc.context, job.paths)
    none = job_for(home, "@none", "--db_service_type", "none")
    assert database(none.rc.context, none.paths) is None
    assert web(none.rc.context, none.paths) is None


# -- nginx ------------------------------------------------------------------------------


def vhost(docroot: Path, **kw: object) -> Vhost:
    base = {"site": "one.example", "uri": "one.example", "aliases": ("www.one.example",),
            "redirection": False, "docroot": str(docroot), "index": ("index.html",),
            "enabled": True}
    base.update(kw)
    return Vhost(**base)  # type: ignore[arg-type]


def test_nginx_vhost_written_tested_reloaded(home: Path, nginx: NginxServer) -> None:
    job = job_for(home, "@web", *nginx.server_fields("svc"))
    server = web(job.rc.context, job.paths)
    assert server is not None
    docroot = world_readable_dir("hostctl-docroot-")
    (docroot / "index.html").write_text("hello from one\n")
    (docroot / "index.html").chmod(0o644)
    path = server.write(job, vhost(docroot))
    assert path == nginx.configs / "svc" / "nginx" / "vhost.d" / "one.example.conf"
    assert (path.stat().st_mode & 0o777) == 0o644
    expect_answer(nginx, "one.example", lambda s, b: s == 200 and b == "hello from one\n",
                "the site to answer")
    expect_answer(nginx, "www.one.example", lambda s, b: s == 200 and b == "hello from one\n",
                "the alias to answer")

    server.write(job, vhost(docroot, redirection=True))
    expect_answer(nginx, "www.one.example", lambda s, b: s == 301, "the alias to redirect",
                headers={"Location": "http://one.example/"})

    server.write(job, vhost(docroot, enabled=False))
    status, body = expect_answer(nginx, "one.example", lambda s, b: s == 503,
                               "the disabled page")
    assert "one.example is disabled" in body
    server.write(job, vhost(docroot, enabled=False, disable_url="http://panel.example/off"))
    expect_answer(nginx, "one.example", lambda s, b: s == 302, "the disabled redirect",
                headers={"Location": "http://panel.example/off"})

    assert server.remove(job, "one.example") is True
    expect_answer(nginx, "one.example", lambda s, b: s == 404 and b == "no such site\n",
                "the site to be gone")
    assert server.remove(job, "one.example") is False
    assert job.result.get("warnings") is None


def test_nginx_refused_config_leaves_the_folder_as_it_was(home: Path,
                                                          nginx: NginxServer) -> None:
    job = job_for(home, "@web", *nginx.server_fields("broken"))
    server = web(job.rc.context, job.paths)
    assert server is not None
    docroot = world_readable_dir("hostctl-docroot-")
    server.write(job, vhost(docroot, site="good.example", uri="good.example", aliases=()))
    before = sorted(os.listdir(server.vhost_dir))
    # someone else's broken file in the folder: every test fails, nothing is reloaded
    (server.vhost_dir / "zz-broken.conf").write_text("server { listen nonsense }\n")
    with pytest.raises(OperationFailed, match=r"nginx -t: .*\[emerg\]"):
        server.write(job, vhost(docroot))
    assert not server.vhost_path("one.example").exists()
    (server.vhost_dir / "zz-broken.conf").unlink()
    assert sorted(os.listdir(server.vhost_dir)) == before
    server.remove(job, "good.example")


def test_nginx_refuses_values_that_would_change_its_config(home: Path,
                                                          nginx: NginxServer) -> None:
    job = job_for(home, "@web", *nginx.server_fields("values"))
    server = web(job.rc.context, job.paths)
    assert server is not None
    for bad in (vhost(Path('/srv/"; include /etc/passwd; "')),
                vhost(Path("/srv/$document_root")),
                vhost(Path("/srv"), aliases=("x.example; include /etc/passwd",)),
                vhost(Path("/srv"), enabled=False, disable_url='http://x/"; return 200')):
        with pytest.raises(InvalidInput):
            server.write(job, bad)
    assert not server.vhost_dir.exists() or os.listdir(server.vhost_dir) == []


def test_nginx_missing_program_is_a_warning(home: Path, tmp_path: Path) -> None:
    job = job_for(home, "@web", "--http_service_type", "nginx", "--nginx_binary",
                  str(tmp_path / "no-nginx"))
    server = web(job.rc.context, job.paths)
    assert server is not None
    path = server.write(job, vhost(tmp_path))
    assert path.exists() and 'root "' in path.read_text()
    assert "no nginx program" in job.result["warnings"][0]


def test_nginx_reloads_with_the_servers_own_command(home: Path, nginx: NginxServer,
                                                   tmp_path: Path) -> None:
    mark = tmp_path / "reloaded by the own command"
    command = (f"/bin/sh -c 'touch \"$0\" && exec {nginx.binary} -c {nginx.conf} -s reload' "
               f"'{mark}'")
    job = job_for(home, "@web", *nginx.server_fields("own"), "--http_restart_cmd", command)
    server = web(job.rc.context, job.paths)
    assert server is not None
    assert server.reload_argv(nginx.binary)[:2] == ["/bin/sh", "-c"]
    docroot = world_readable_dir("hostctl-docroot-")
    (docroot / "index.html").write_text("own reload\n")
    (docroot / "index.html").chmod(0o644)
    server.write(job, vhost(docroot, site="own.example", uri="own.example", aliases=()))
    assert mark.exists()
    expect_answer(nginx, "own.example", lambda s, b: b == "own reload\n", "the site")
    server.remove(job, "own.example")
    from hostctl.cli.main import main

    # a command that cannot be split is refused when saved; one written by hand is
    # refused again where it is used
    assert main(["--home", str(home), "provision-save", "@broken", "--context_type",
                 "server", "--http_restart_cmd", "/bin/sh -c 'unclosed"]) == 2
    path = home / "contexts" / "web.toml"
    hand = "http_restart_cmd = \"/bin/sh -c 'unclosed\""
    lines = [hand if ln.startswith("http_restart_cmd") else ln
             for ln in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    broken = job_for(home, "@web", *nginx.server_fields("own"))
    nginx_broken = web(broken.rc.context, broken.paths)
    assert nginx_broken is not None
    with pytest.raises(InvalidInput, match="http_restart_cmd: No closing quotation"):
        nginx_broken.reload_argv(nginx.binary)


def test_nginx_listen_addresses(home: Path) -> None:
    job = job_for(home, "@web", "--http_service_type", "nginx", "--http_port", "8080",
                  "--ip_addresses", "127.0.0.1,::1")
    server = web(job.rc.context, job.paths)
    assert server is not None
    assert server.listens() == ["127.0.0.1:8080", "[::1]:8080"]
    text = server.render(vhost(Path("/srv/www")))
    assert "    listen 127.0.0.1:8080;\n    listen [::1]:8080;\n" in text
    assert "server_name one.example www.one.example;" in text
    from hostctl.cli.main import main

    # refused when saved; a value written by hand is refused again where it is used
    assert main(["--home", str(home), "provision-save", "@bad", "--context_type", "server",
                 "--ip_addresses", "localhost"]) == 2
    path = home / "contexts" / "web.toml"
    path.write_text(path.read_text().replace('"::1"', '"localhost"'))
    nginx_bad = web(TomlStore(job.paths).get("@web"), job.paths)
    assert nginx_bad is not None
    with pytest.raises(InvalidInput, match="not an IP address"):
        nginx_bad.listens()
