"""``hostctl cluster init|status`` on a real PostgreSQL (a private server made with initdb,
run as an unprivileged user): the schema made once and kept up to date, from several
hosts at once; the database's password never shown; one-line errors for every way the
setting or the database can be wrong."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import hostctl_exe
from provisionhelpers import Lab, PgCluster, start_postgres, world_readable_dir
from taskhelpers import write_config

from hostctl.errors import ExitStatus

SECRET = "Cl-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = start_postgres()
    try:
        cluster.psql(f"CREATE ROLE hostctl LOGIN PASSWORD '{SECRET}'")
        yield cluster
    finally:
        cluster.stop()


_made = [0]


@pytest.fixture
def dsn(pg: PgCluster) -> str:
    """A fresh database of the hostctl role's own, for each test."""
    _made[0] += 1
    name = f"cluster{_made[0]}"
    pg.psql(f"CREATE DATABASE {name} OWNER hostctl")
    return f"host=127.0.0.1 port={pg.port} dbname={name} user=hostctl password={SECRET}"


def in_cluster(home: Path, dsn: str) -> None:
    write_config(home, {"cluster": {"dsn": dsn}})


def save_topology(run_hostctl: Any, home: Path, www: Path, *site_fields: str) -> None:
    """@srv, @plat (its root ``www``) and @a.example (with ``site_fields``) in ``home``."""
    www.mkdir(exist_ok=True)
    for argv in (["@srv", "--context_type", "server"],
                 ["@plat", "--context_type", "platform", "--root", str(www),
                  "--web_server", "@srv"],
                 ["@a.example", "--context_type", "site", "--platform", "@plat",
                  *site_fields]):
        res = run_hostctl("--home", str(home), "provision-save", *argv)
        assert res.code == 0, res


def tables(pg: PgCluster, dsn: str) -> set[str]:
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    return set(pg.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                       database=db))


def test_init_makes_the_schema_once_and_status_reports_it(run_hostctl, home: Path,
                                                          pg: PgCluster, dsn: str) -> None:
    in_cluster(home, dsn)
    before = run_hostctl("cluster", "status", "--json")
    assert before.code == ExitStatus.ERROR, before  # no schema yet
    assert json.loads(before.out)["schema"] == {}
    first = run_hostctl("cluster", "init", "--json")
    assert first.code == 0, first
    report = json.loads(first.out)
    assert report["before"] == {} and report["changed"]
    assert report["after"]["hostctl"] == "3"
    assert report["applied"] == [f"procrastinate schema {report['after']['procrastinate']}"]
    assert {"procrastinate_jobs", "procrastinate_workers", "hostctl_schema",
            "hostctl_contexts", "hostctl_secrets"} <= tables(pg, dsn)
    again = run_hostctl("cluster", "init", "--json")
    assert again.code == 0, again
    assert json.loads(again.out)["applied"] == [] and not json.loads(again.out)["changed"]
    status = run_hostctl("cluster", "status", "--json")
    assert status.code == 0, status
    doc = json.loads(status.out)
    assert doc["ready"] and doc["schema"] == report["after"]
    assert doc["jobs"] == {} and doc["workers"] == []
    assert doc["database"].startswith("hostctl@127.0.0.1:")
    text = run_hostctl("cluster", "status")
    assert text.code == 0 and "schema: hostctl 3, procrastinate" in text.out
    for res in (first, again, status, text):
        assert SECRET not in res.out + res.err


def test_status_counts_jobs_per_queue_and_shows_workers(run_hostctl, home: Path,
                                                        pg: PgCluster, dsn: str) -> None:
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    pg.psql("INSERT INTO procrastinate_jobs (queue_name, task_name) VALUES "
            "('web1', 'install'), ('web1', 'verify'), ('web2', 'verify');"
            "INSERT INTO procrastinate_workers DEFAULT VALUES;", database=db,
            user="hostctl", password=SECRET)
    doc = json.loads(run_hostctl("cluster", "status", "--json").out)
    assert doc["jobs"] == {"web1": {"todo": 2}, "web2": {"todo": 1}}
    assert len(doc["workers"]) == 1 and 0 <= doc["workers"][0]["heartbeat_age"] < 60
    text = run_hostctl("cluster", "status")
    assert text.code == 0, text
    rows = [line.split() for line in text.out.splitlines()]
    assert ["web1", "todo", "2"] in rows and ["web2", "todo", "1"] in rows
    assert ["WORKER", "LAST", "HEARTBEAT", "(s", "ago)"] in rows


def test_hosts_running_init_at_once_leave_one_schema(home: Path, pg: PgCluster,
                                                     dsn: str) -> None:
    in_cluster(home, dsn)
    env = {**os.environ, "HOSTCTL_HOME": str(home)}
    procs = [subprocess.Popen([hostctl_exe(), "cluster", "init", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    applied = [json.loads(out)["applied"] for out, _err in outs]
    assert sorted(len(a) for a in applied) == [0, 0, 0, 1]  # one applied it, once
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    assert pg.psql("SELECT count(*) FROM hostctl_schema", database=db) == ["2"]


def test_a_schema_newer_than_this_host_is_left_alone(run_hostctl, home: Path, pg: PgCluster,
                                                     dsn: str) -> None:
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    pg.psql("UPDATE hostctl_schema SET version = '99.0.0' WHERE component = 'procrastinate'",
            database=db, user="hostctl", password=SECRET)
    res = run_hostctl("cluster", "init")
    assert res.code == ExitStatus.ERROR and res.err.count("\n") == 1, res
    assert "newer than this host's procrastinate" in res.err
    assert pg.psql("SELECT version FROM hostctl_schema WHERE component = 'procrastinate'",
                   database=db) == ["99.0.0"]  # rolled back: nothing changed
    assert run_hostctl("cluster", "status").code == ExitStatus.ERROR


def test_tables_hostctl_did_not_make_are_refused(run_hostctl, home: Path, pg: PgCluster,
                                                 dsn: str) -> None:
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    pg.psql("CREATE TABLE procrastinate_jobs (id int)", database=db, user="hostctl",
            password=SECRET)
    in_cluster(home, dsn)
    res = run_hostctl("cluster", "init")
    assert res.code == ExitStatus.ERROR and "did not make" in res.err, res
    assert "hostctl_schema" not in tables(pg, dsn)  # the whole init was rolled back


def test_the_environment_wins_and_a_home_alone_says_so(run_hostctl, home: Path, dsn: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    alone = run_hostctl("cluster", "status")
    assert alone.code == ExitStatus.USAGE and "not in a cluster" in alone.err, alone
    in_cluster(home, "host=127.0.0.1 port=1 dbname=nowhere user=nobody")
    monkeypatch.setenv("HOSTCTL_CLUSTER_DSN", dsn)
    assert run_hostctl("cluster", "init").code == 0


@pytest.mark.parametrize("wrong, code, says", [
    ("host=127.0.0.1 port=5432 dbname", ExitStatus.USAGE, "not a PostgreSQL connection"),
    ("postgresql://[::1", ExitStatus.USAGE, "not a PostgreSQL connection"),
    ("host=127.0.0.1 port=1 dbname=x user=hostctl password=" + SECRET, ExitStatus.ERROR,
     "cannot reach the cluster's database hostctl@127.0.0.1:1/x"),
])
def test_a_wrong_dsn_is_one_line_without_its_password(run_hostctl, home: Path, wrong: str,
                                                      code: int, says: str) -> None:
    in_cluster(home, wrong)
    res = run_hostctl("cluster", "init")
    assert res.code == code and res.out == "" and res.err.count("\n") == 1, res
    assert says in res.err and SECRET not in res.err


def test_a_wrong_password_is_one_line_without_either_password(run_hostctl, home: Path,
                                                              pg: PgCluster, dsn: str) -> None:
    wrong = dsn.replace(SECRET, "Wrong-" + SECRET)
    in_cluster(home, wrong)
    res = run_hostctl("cluster", "status")
    assert res.code == ExitStatus.ERROR and res.err.count("\n") == 1, res
    assert "password authentication failed" in res.err
    assert SECRET not in res.err


def test_a_malformed_cluster_table_is_refused_by_the_config(run_hostctl, home: Path) -> None:
    for body in ('[cluster]\ndsn = 5\n', '[cluster]\nhost = "x"\n'):
        (home / "config.toml").parent.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(body)
        res = run_hostctl("cluster", "status")
        assert res.code == ExitStatus.USAGE and "[cluster]" in res.err, res


def test_every_host_of_a_cluster_sees_the_same_contexts(run_hostctl, tmp_path: Path,
                                                        pg: PgCluster, dsn: str) -> None:
    """Two homes standing for two hosts, one database: what one saves the other shows,
    checks tasks against and may not contradict."""
    web1, web2 = tmp_path / "web1", tmp_path / "web2"
    for home in (web1, web2):
        in_cluster(home, dsn)
    assert run_hostctl("--home", str(web1), "cluster", "init").code == 0
    save_topology(run_hostctl, web1, tmp_path / "www", "--aliases", "www.a.example")
    shown = run_hostctl("--home", str(web2), "context", "show", "@a.example", "--json")
    assert shown.code == 0, shown
    assert json.loads(shown.out)["fields"]["platform"] == "@plat"
    listed = run_hostctl("--home", str(web2), "context", "list", "--json")
    assert sorted(c["name"] for c in json.loads(listed.out)) == [
        "@a.example", "@plat", "@srv"]
    taken = run_hostctl("--home", str(web2), "provision-save", "@b.example",
                        "--context_type", "site", "--platform", "@plat",
                        "--aliases", "www.a.example")
    assert taken.code == ExitStatus.USAGE and "taken by @a.example" in taken.err, taken
    added = run_hostctl("--home", str(web2), "task", "add", "verify", "@a.example")
    assert added.code == 0, added
    refused = run_hostctl("--home", str(web2), "task", "add", "verify", "@nope.example")
    assert refused.code != 0 and "nope.example" in refused.err
    assert not (web1 / "contexts").exists() and not (web2 / "contexts").exists()
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    assert pg.psql("SELECT count(*) FROM hostctl_contexts", database=db) == ["3"]


def test_a_home_moves_into_the_cluster_and_back_out(run_hostctl, tmp_path: Path,
                                                    pg: PgCluster, dsn: str) -> None:
    alone, fresh = tmp_path / "alone", tmp_path / "fresh"
    save_topology(run_hostctl, alone, tmp_path / "www", "--language", "fr")
    before = json.loads(run_hostctl("--home", str(alone), "context", "show", "@a.example",
                                    "--json").out)
    in_cluster(alone, dsn)
    assert run_hostctl("--home", str(alone), "cluster", "init").code == 0
    assert json.loads(run_hostctl("--home", str(alone), "context", "list",
                                  "--json").out) == []  # the cluster's: empty yet
    moved = run_hostctl("--home", str(alone), "cluster", "import", "--json")
    assert moved.code == 0, moved
    assert sorted(json.loads(moved.out)["taken"]) == ["@a.example", "@plat", "@srv"]
    again = json.loads(run_hostctl("--home", str(alone), "cluster", "import", "--json").out)
    assert again["taken"] == [] and len(again["already"]) == 3
    inside = json.loads(run_hostctl("--home", str(alone), "context", "show", "@a.example",
                                    "--json").out)
    assert inside == before
    # out again, into a home of its own: its files, then without the cluster
    in_cluster(fresh, dsn)
    out = run_hostctl("--home", str(fresh), "cluster", "export")
    assert out.code == 0 and "3 context(s) and 0 site record(s) copied" in out.out, out
    (fresh / "config.toml").unlink()
    back = json.loads(run_hostctl("--home", str(fresh), "context", "show", "@a.example",
                                  "--json").out)
    assert back == before
    # a home whose files disagree with the cluster is refused, and nothing changes
    assert run_hostctl("--home", str(alone), "provision-save", "@a.example",
                       "--language", "de").code == 0  # in the cluster now
    in_cluster(fresh, dsn)
    refused = run_hostctl("--home", str(fresh), "cluster", "export")
    assert refused.code == ExitStatus.USAGE and "differs" in refused.err, refused


def test_a_site_lives_its_life_on_the_clusters_contexts_and_secrets(
        run_hostctl, home: Path, pg: PgCluster, dsn: str) -> None:
    """install (through the queue: the worker and its task's child on the database),
    verify, disable and delete a site whose contexts and record are in the database:
    nothing of them is written under the home."""
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-www-"))
    lab.server(db="sqlite")
    lab.platform()
    site = lab.site("@shop.example")
    lab.must("install", site, "queue")
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    [doc] = pg.psql("SELECT document FROM hostctl_secrets WHERE site = 'shop.example'",
                    database=db)
    record = json.loads(doc)
    assert record["site"] == "@shop.example" and record["db"]["type"] == "sqlite"
    assert not (home / "secrets").exists() and not (home / "contexts").exists()
    lab.must("verify", site)
    lab.must("disable", site, "queue")
    lab.must("delete", site)
    assert pg.psql("SELECT count(*) FROM hostctl_secrets", database=db) == ["0"]
    assert pg.psql("SELECT count(*) FROM hostctl_contexts WHERE type = 'site'",
                   database=db) == ["0"]


def test_an_installed_site_moves_in_with_its_record_and_back_out(
        run_hostctl, home: Path, tmp_path: Path, pg: PgCluster, dsn: str) -> None:
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-www-"))
    lab.server(db="sqlite")
    lab.platform()
    site = lab.site("@shop.example")
    lab.must("install", site)
    on_file = (home / "secrets" / "shop.example.toml").read_text()
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    moved = run_hostctl("cluster", "import", "--json")
    assert moved.code == 0, moved
    doc = json.loads(moved.out)
    assert doc["records"] == {"taken": ["@shop.example"], "already": []}
    lab.must("verify", site)  # in the cluster: its record read from the database
    again = json.loads(run_hostctl("cluster", "import", "--json").out)
    assert again["records"] == {"taken": [], "already": ["@shop.example"]}
    fresh = tmp_path / "fresh"
    in_cluster(fresh, dsn)
    out = run_hostctl("--home", str(fresh), "cluster", "export")
    assert out.code == 0 and "1 site record(s) copied" in out.out, out
    assert (fresh / "secrets" / "shop.example.toml").read_text() == on_file
    assert (fresh / "secrets" / "shop.example.toml").stat().st_mode & 0o777 == 0o600
    # a record that differs on the two sides stops the copy before anything is written
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    pg.psql("UPDATE hostctl_secrets SET document = jsonb_set(document, '{salt}', "
            "'\"changed\"') WHERE site = 'shop.example'", database=db)
    refused = run_hostctl("--home", str(fresh), "cluster", "export")
    assert refused.code == ExitStatus.USAGE and "record of @shop.example" in refused.err
    assert (fresh / "secrets" / "shop.example.toml").read_text() == on_file


def test_no_role_but_the_back_ends_reads_the_records(run_hostctl, home: Path,
                                                     pg: PgCluster, dsn: str) -> None:
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    pg.psql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nosy') "
            "THEN CREATE ROLE nosy LOGIN PASSWORD 'nosy-pw'; END IF; END $$")
    pg.psql(f"GRANT CONNECT ON DATABASE {db} TO nosy; GRANT USAGE ON SCHEMA public TO nosy")
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": "nosy",
           "PGPASSWORD": "nosy-pw", "PGDATABASE": db}
    res = subprocess.run([f"{pg.bindir}/psql", "-X", "-A", "-t", "-c",
                          "SELECT * FROM hostctl_secrets"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0 and "permission denied" in res.stderr, res
    acl = pg.psql("SELECT relacl::text FROM pg_class WHERE relname = 'hostctl_secrets'",
                  database=db)
    assert acl and "=r" not in acl[0].split("hostctl=")[0]  # nothing granted to PUBLIC


def test_doctor_checks_the_clusters_database(run_hostctl, home: Path, dsn: str) -> None:
    in_cluster(home, dsn)
    (home / "config.toml").chmod(0o600)  # it holds the database's password
    before = run_hostctl("doctor", "--json")
    assert before.code == ExitStatus.ERROR, before
    [problem] = json.loads(before.out)
    assert "run `hostctl cluster init`" in problem["problem"]
    assert SECRET not in before.out + before.err
    assert run_hostctl("cluster", "init").code == 0
    after = run_hostctl("doctor", "--json")
    assert after.code == 0 and json.loads(after.out) == [], after
    in_cluster(home, dsn.replace(SECRET, "not-it"))
    (home / "config.toml").chmod(0o600)
    wrong = run_hostctl("doctor", "--json")
    assert wrong.code == ExitStatus.ERROR, wrong
    [problem] = json.loads(wrong.out)
    assert "password authentication failed" in problem["problem"]
    assert "not-it" not in wrong.out + wrong.err


def test_a_worker_that_reloads_into_a_cluster_takes_its_stores(run_hostctl, home: Path,
                                                               dsn: str) -> None:
    """wait-queue reloads config.toml when it changes: a home that joins a cluster has
    its worker read and write the cluster's contexts and records from then on."""
    from hostctl.contexts.pgstore import PgStore
    from hostctl.paths import Paths
    from hostctl.provision.pgsecrets import PgSecrets
    from hostctl.runners.home import Home
    from hostctl.runners.worker import Worker

    worker = Worker.of(Home(Paths(home)))
    assert not isinstance(worker.store, PgStore)
    in_cluster(home, dsn)
    fresh = Home(Paths(home))
    worker.reconfigure(fresh.config, fresh.registry)
    assert isinstance(worker.store, PgStore) and isinstance(worker.secrets, PgSecrets)
