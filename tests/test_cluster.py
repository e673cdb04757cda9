"""``hostctl cluster init|status`` on a real PostgreSQL (a private server made with initdb,
run as an unprivileged user): the schema made once and kept up to date, from several
hosts at once; the database's password never shown; one-line errors for every way the
setting or the database can be wrong."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import hostctl_exe
from pghelpers import SECRET, AnswersHeld
from provisionhelpers import Lab, PgCluster, world_readable_dir
from taskhelpers import write_config

from hostctl.errors import ExitStatus, NotFound, OperationFailed
from hostctl.runners import cluster


@pytest.fixture
def pg(pg_server: PgCluster) -> PgCluster:
    return pg_server


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
    assert report["after"]["hostctl"] == str(cluster.SCHEMA_VERSION)
    assert report["applied"] == [f"procrastinate schema {report['after']['procrastinate']}"]
    assert {"procrastinate_jobs", "procrastinate_workers", "hostctl_schema",
            "hostctl_contexts", "hostctl_secrets", "hostctl_tasks", "hostctl_task_logs",
            "hostctl_owners", "hostctl_records"} <= tables(pg, dsn)
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
    assert text.code == 0
    assert f"schema: hostctl {cluster.SCHEMA_VERSION}, procrastinate" in text.out
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
    assert ["WORKER", "HOST", "PID", "SERVER", "ALIVE", "HEARTBEAT", "(s", "ago)"] in rows


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


def test_queued_tasks_move_into_the_cluster_with_their_history(run_hostctl, home: Path,
                                                               tmp_path: Path,
                                                               dsn: str) -> None:
    from hostctl.queues.model import Status
    from hostctl.queues.spool import Spool

    save_topology(run_hostctl, home, tmp_path / "www")
    spool_ids = [run_hostctl("task", "add", "verify", name, "-p", str(p)).out.strip()
                 for name, p in (("@a.example", 3), ("@srv", 7))]
    later = run_hostctl("task", "add", "verify", "@plat", "--delay", "3600").out.strip()
    before = {t.id: t for t in Spool(home / "spool", home / "logs").tasks()}
    assert sorted(before) == sorted([*spool_ids, later])
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    res = run_hostctl("cluster", "import", "--json")
    assert res.code == 0, res
    moved = json.loads(res.out)["tasks"]
    assert sorted(moved["moved"]) == sorted(before) and moved["left"] == 0
    assert Spool(home / "spool", home / "logs").tasks() == []  # gone from the spool
    inside = {t["id"]: t for t in json.loads(run_hostctl("task", "list", "--json").out)}
    assert sorted(inside) == sorted(before)
    for task_id, task in before.items():
        doc = inside[task_id]
        assert (doc["type"], doc["context"], doc["priority"], doc["options"]) == (
            task.envelope.type, task.envelope.context, task.envelope.priority,
            dict(task.envelope.options))
        assert doc["status"] == Status.QUEUED.label
    due = json.loads(run_hostctl("task", "show", later, "--json").out)["due"]
    assert due == before[later].to_json()["due"]  # still an hour away, not due now
    again = json.loads(run_hostctl("cluster", "import", "--json").out)["tasks"]
    assert again == {"moved": [], "already": [], "left": 0}
    # the cluster's worker runs them, the deferred one at its time
    assert run_hostctl("wait-queue", "--once").code == 0
    statuses = {t["id"]: t["status"] for t in
                json.loads(run_hostctl("task", "list", "--json").out)}
    assert statuses == {spool_ids[0]: "success", spool_ids[1]: "success", later: "queued"}


def _claim_from_spool(home: Path, out: Any) -> None:
    from hostctl.queues.spool import Spool

    spool = Spool(home / "spool", home / "logs")
    taken: list[str] = []
    for _ in range(400):
        for claim in spool.claim(limit=3):
            taken.append(claim.task.id)
            claim.append("start", attempt=1)
            spool.finish(claim, "success")
            if len(taken) == 1:
                out.send("started")
        time.sleep(0.005)
    out.send(taken)


def test_an_import_racing_a_spool_worker_moves_or_leaves_each_task_once(
        run_hostctl, home: Path, tmp_path: Path, dsn: str) -> None:
    import multiprocessing

    from hostctl.queues.model import Envelope, Status, new_id
    from hostctl.queues.spool import Spool
    from hostctl.times import utc_iso

    save_topology(run_hostctl, home, tmp_path / "www")
    spool = Spool(home / "spool", home / "logs")
    ids = {spool.publish(Envelope(new_id(), "verify", f"@s{n % 9}.example", {}, {}, 5,
                                  utc_iso()), dedup=False)[0] for n in range(300)}
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    ctx = multiprocessing.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    racer = ctx.Process(target=_claim_from_spool, args=(home, w))
    racer.start()
    assert r.poll(60) and r.recv() == "started"
    moved: set[str] = set()
    for _ in range(3):
        res = run_hostctl("cluster", "import", "--json")
        assert res.code == 0, res
        moved |= set(json.loads(res.out)["tasks"]["moved"])
    assert r.poll(120)
    ran = set(r.recv())
    racer.join(30)
    left = {t.id for t in spool.tasks((Status.QUEUED,))}
    assert not (moved & ran) and not (moved & left)  # none in two places
    assert moved | ran | left == ids  # none lost
    assert moved and ran  # a real race: each side took some
    inside = {t["id"] for t in json.loads(run_hostctl("task", "list", "--json").out)}
    assert inside == moved


def test_a_wait_queue_whose_home_joins_a_cluster_hands_over(home: Path, dsn: str,
                                                           procs: Any) -> None:
    from runnerhelpers import hostctl_log, wait_exit, wait_for

    write_config(home, {})
    proc = procs.start("wait-queue", "--housekeeping-every", "0.2")
    wait_for(lambda: f"wait-queue {proc.pid} started" in hostctl_log(home), 30,
             "wait-queue to start")
    in_cluster(home, dsn)
    assert wait_exit(proc, 30, "wait-queue") == 0
    assert "the home's cluster changed; exiting" in hostctl_log(home)


def test_a_host_that_runs_no_tasks_leaves_them_to_the_servers(run_hostctl, home: Path,
                                                             tmp_path: Path,
                                                             dsn: str) -> None:
    """A front end's host ([cluster] run_tasks = false): its wait-queue admits and runs
    the periodic queues, and takes no task of any server."""
    save_topology(run_hostctl, home, tmp_path / "www")
    write_config(home, {"cluster": {"dsn": dsn, "run_tasks": False}})
    assert run_hostctl("cluster", "init").code == 0
    assert run_hostctl("cluster", "import").code == 0
    task_id = run_hostctl("task", "add", "verify", "@a.example").out.strip()
    assert run_hostctl("wait-queue", "--once").code == 0
    assert json.loads(run_hostctl("task", "show", task_id, "--json").out)["status"] == \
        "queued"
    server = tmp_path / "web"
    write_config(server, {"cluster": {"dsn": dsn, "server": "@srv"}})
    assert run_hostctl("--home", str(server), "wait-queue", "--once").code == 0
    assert json.loads(run_hostctl("task", "show", task_id, "--json").out)["status"] == \
        "success"
    bad = tmp_path / "bad"
    write_config(bad, {"cluster": {"dsn": dsn, "run_tasks": "no"}})
    res = run_hostctl("--home", str(bad), "task", "list")
    assert res.code != 0 and "run_tasks must be true or false" in res.err, res


@pytest.mark.parametrize(("server", "says"), [
    ("@nope", "no context"),
    ("@plat", "is a platform, not a server"),
    ("Bad Name", "invalid context name"),
])
def test_a_worker_for_a_server_that_is_not_one_is_refused(run_hostctl, home: Path,
                                                          tmp_path: Path, dsn: str,
                                                          server: str, says: str) -> None:
    save_topology(run_hostctl, home, tmp_path / "www")
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    assert run_hostctl("cluster", "import").code == 0
    for argv in (["wait-queue", "--once", "--server", server],
                 ["dispatch", "--server", server]):
        res = run_hostctl(*argv)
        assert res.code != 0 and says in res.err, (argv, res)
        assert len(res.err.strip().splitlines()) == 1, res.err


def test_a_task_run_by_hand_on_another_servers_host_is_refused(run_hostctl, home: Path,
                                                               tmp_path: Path,
                                                               dsn: str) -> None:
    save_topology(run_hostctl, home, tmp_path / "www")
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    assert run_hostctl("cluster", "import").code == 0
    assert run_hostctl("provision-save", "@other", "--context_type", "server").code == 0
    elsewhere = tmp_path / "other"
    write_config(elsewhere, {"cluster": {"dsn": dsn, "server": "@other"}})
    res = run_hostctl("--home", str(elsewhere), "provision-verify", "@a.example")
    assert res.code != 0, res
    assert "@a.example is served by @srv, and this host is @other" in res.err, res
    assert json.loads(run_hostctl("task", "list", "--json").out) == []  # nothing queued
    here = tmp_path / "srv"
    write_config(here, {"cluster": {"dsn": dsn, "server": "@srv"}})
    ok = run_hostctl("--home", str(here), "provision-verify", "@a.example")
    assert ok.code == 0, ok


def test_init_upgrades_an_older_hostctl_schema_step_by_step(run_hostctl, home: Path,
                                                            pg: PgCluster, dsn: str) -> None:
    """A database made by an earlier hostctl (schema 4: no origin of dropped tasks, no
    tallies, no offers) is brought to this one by the steps after it, its tasks kept."""
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    pg.psql("DROP INDEX hostctl_tasks_origin; ALTER TABLE hostctl_tasks DROP COLUMN origin;"
            "DROP TABLE hostctl_tallies; DROP TABLE hostctl_offers;"
            "ALTER TABLE hostctl_tasks DROP COLUMN handed;"
            "ALTER TABLE hostctl_owners DROP COLUMN handoff;"
            "UPDATE hostctl_schema SET version = '4' WHERE component = 'hostctl'",
            database=db, user="hostctl", password=SECRET)
    res = run_hostctl("cluster", "init", "--json")
    assert res.code == 0, res
    report = json.loads(res.out)
    assert report["before"]["hostctl"] == "4"
    assert report["after"]["hostctl"] == str(cluster.SCHEMA_VERSION)
    assert pg.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = "
                   "'hostctl_tasks' AND column_name = 'origin'", database=db) == ["1"]
    assert pg.psql("SELECT count(*) FROM hostctl_tallies", database=db) == ["0"]
    assert pg.psql("SELECT count(*) FROM hostctl_offers", database=db) == ["0"]


def test_a_run_on_a_host_gone_is_recovered_elsewhere_only_once_its_lease_ran_out(
        home: Path, tmp_path: Path, dsn: str, pg: PgCluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its processes may live on where nobody here can stop them: another host's sweep
    leaves it until the lease its worker renewed has run out (by then that worker, if it
    lives, has stopped the run itself: see the next test)."""
    from hostctl.queues.model import Envelope, Policy, Status, new_id
    from hostctl.queues.pgqueue import PgQueue
    from hostctl.times import utc_iso

    cluster.init(dsn)
    monkeypatch.setenv("HOSTCTL_HOST_NAME", "web9.test")
    gone = PgQueue(dsn, tmp_path / "web9", tmp_path / "web9logs")
    env = Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso())
    gone.publish(env)
    [claim] = gone.claim()
    claim.append("start", attempt=1, pid=999999, pgid=999999, worker=4242,
                 host="web9.test")
    claim.release()  # as its worker's death would leave it (its owner no one)
    monkeypatch.setenv("HOSTCTL_HOST_NAME", "web1.test")
    here = PgQueue(dsn, tmp_path / "web1", tmp_path / "web1logs")
    rules = lambda _e: Policy(max_attempts=3, backoff_base=0.0, backoff_max=0.0)  # noqa: E731
    assert here.sweep(rules) == []
    assert here.get(env.id).status is Status.PROCESSING  # left to web9, or to its lease
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    pg.psql(f"UPDATE hostctl_tasks SET lease_until = now() - interval '1 second' "
            f"WHERE id = '{env.id}'", database=db, user="hostctl", password=SECRET)
    [note] = here.sweep(rules)
    assert "pid 4242 on web9.test" in note and "queued again" in note, note
    task = here.get(env.id)
    assert task.status is Status.QUEUED and task.attempts[0].outcome == "lost"


def test_a_worker_that_cannot_renew_its_lease_is_told_to_stop_the_run(
        tmp_path: Path, dsn: str) -> None:
    from hostctl.queues.backend import LeaseLost
    from hostctl.queues.model import Envelope, new_id
    from hostctl.queues.pgqueue import FENCE_AFTER, PgQueue
    from hostctl.times import utc_iso

    cluster.init(dsn)
    q = PgQueue(dsn, tmp_path / "spool", tmp_path / "logs")
    q.publish(Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso()))
    [claim] = q.claim()
    q.heartbeat(claim)  # renewed
    q.db.close()
    q.db.dsn = re.sub(r"port=\d+", "port=1", dsn) + " connect_timeout=1"  # cut off
    with pytest.raises(OperationFailed) as first:  # not yet: tried again next beat
        q.heartbeat(claim)
    assert not isinstance(first.value, LeaseLost)
    claim.renewed -= FENCE_AFTER + 1  # no renewal for longer than the fence allows
    with pytest.raises(LeaseLost, match="could not be renewed"):
        q.heartbeat(claim)


def test_a_worker_whose_claim_was_taken_over_kills_the_run_and_records_nothing(
        run_hostctl, home: Path, tmp_path: Path, dsn: str, pg: PgCluster) -> None:
    from runnerhelpers import sh_task

    from hostctl.paths import Paths
    from hostctl.process import alive
    from hostctl.runners.home import Home
    from hostctl.runners.worker import Worker

    save_topology(run_hostctl, home, tmp_path / "www")
    write_config(home, {"cluster": {"dsn": dsn},
                        "tasks": {"slow": sh_task("sleep 30")}})
    assert run_hostctl("cluster", "init").code == 0
    assert run_hostctl("cluster", "import").code == 0
    task_id = run_hostctl("task", "add", "slow", "@a.example").out.strip()
    worker = Worker.of(Home(Paths(home)))
    assert worker.step() == 1
    [run] = worker.running.values()
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    pg.psql(f"UPDATE hostctl_tasks SET owner = 0 WHERE id = '{task_id}'", database=db,
            user="hostctl", password=SECRET)  # another host took it over
    run.beat_at -= 3600  # its heartbeat is due
    deadline = time.monotonic() + 30
    while worker.running and time.monotonic() < deadline:
        worker.wait(0.2)
    assert not worker.running and not alive(run.pid)
    assert worker.summary.finished.get("lost") == 1
    doc = json.loads(run_hostctl("task", "show", task_id, "--json").out)
    assert doc["status"] == "processing" and doc["attempts"][0]["outcome"] is None, doc


def test_a_workers_heartbeats_reach_procrastinates_worker_row(tmp_path: Path, dsn: str,
                                                              pg: PgCluster) -> None:
    """Both the registration's update and a claim's heartbeat renew the owner's
    ``procrastinate_workers.last_heartbeat`` (what ``cluster status`` shows)."""
    from hostctl.queues.model import Envelope, new_id
    from hostctl.queues.pgqueue import PgQueue
    from hostctl.times import utc_iso

    cluster.init(dsn)
    db = dict(p.split("=", 1) for p in dsn.split())["dbname"]

    def age() -> float:
        [value] = pg.psql("SELECT extract(epoch FROM now() - last_heartbeat) FROM "
                          "procrastinate_workers", database=db)
        return float(value)

    def make_old() -> None:
        pg.psql("UPDATE procrastinate_workers SET last_heartbeat = now() - "
                "interval '1 hour'", database=db)

    q = PgQueue(dsn, tmp_path / "spool", tmp_path / "logs")
    registration = q.register_worker(os.getpid(), utc_iso(), 60.0)
    make_old()
    registration.update(3)
    assert age() < 60
    q.publish(Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso()))
    [claim] = q.claim()
    make_old()
    q.heartbeat(claim)
    assert age() < 60


def test_a_paused_queue_claims_nothing_whatever_a_worker_last_heard(
        tmp_path: Path, dsn: str) -> None:
    """A worker keeps what it read of the pause while its watch listens; the claim
    itself asks the database, so a pause from another host stops it at once; the
    pause's notice makes the worker ask again."""
    from hostctl.queues.model import Envelope, new_id
    from hostctl.queues.pgqueue import PgQueue
    from hostctl.times import utc_iso

    cluster.init(dsn)
    worker = PgQueue(dsn, tmp_path / "w", tmp_path / "wlogs")
    other = PgQueue(dsn, tmp_path / "o", tmp_path / "ologs")
    watch = worker.watch()
    try:
        env = Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso())
        other.publish(env)
        assert worker.paused() is False
        other.pause()
        assert worker.paused() is False  # what it heard last: the notice not yet read
        assert worker.claim() == []  # ... but the claim sees the pause
        deadline = time.monotonic() + 10
        while not worker.paused() and time.monotonic() < deadline:
            watch.drain()
            time.sleep(0.01)
        assert worker.paused() is True
        other.resume()
        deadline = time.monotonic() + 10
        while worker.paused() and time.monotonic() < deadline:
            watch.drain()
            time.sleep(0.01)
        [claim] = worker.claim()
        assert claim.task.id == env.id
        # the claim's own commit is not waited for; the session's stays synchronous
        [(mode,)] = worker.db.rows("SHOW synchronous_commit")
        assert mode == "on"
    finally:
        watch.close()
    alone = PgQueue(dsn, tmp_path / "a", tmp_path / "alogs")  # no watch: it always asks
    assert alone.paused() is False
    other.pause()
    assert alone.paused() is True


def test_a_claim_hands_its_contexts_document_to_the_store(tmp_path: Path, dsn: str,
                                                          run_hostctl: Any, home: Path) -> None:
    """The claim reads the task's context with the task; within a reading() scope the
    store serves it from there, later reads of it too, and a write reads afresh."""
    from hostctl.contexts.pgstore import PgStore
    from hostctl.queues.model import Envelope, new_id
    from hostctl.queues.pgqueue import PgQueue
    from hostctl.times import utc_iso

    cluster.init(dsn)
    store, other = PgStore(dsn), PgStore(dsn)
    store.save("@srv", {}, "server")
    seen: list[tuple[str, Any]] = []
    q = PgQueue(dsn, tmp_path / "w", tmp_path / "wlogs",
                prime=lambda name, doc: (seen.append((name, doc)), store.prime(name, doc)))
    for context in ("@srv", "@none"):
        q.publish(Envelope(new_id(), "verify", context, {}, {}, 5, utc_iso()))
    with store.reading():
        claims = q.claim(limit=2)
        assert len(claims) == 2
        assert sorted(name for name, _ in seen) == ["none", "srv"]
        assert dict(seen)["none"] is None and dict(seen)["srv"]["type"] == "server"
        # another host, meanwhile
        other.save("@srv", {"ip_addresses": "192.0.2.7"})
        other.save("@none", {}, "server")
        assert store.get("@srv").get("ip_addresses") == []  # as the claim read them
        with pytest.raises(NotFound):
            store.get("@none")
        store.save("@srv", {"ip_addresses": "192.0.2.8"})  # a write reads afresh
        assert store.get("@srv").get("ip_addresses") == ["192.0.2.8"]
        other.save("@srv", {"ip_addresses": "192.0.2.9"})
        assert store.get("@srv").get("ip_addresses") == ["192.0.2.8"]
    assert store.get("@srv").get("ip_addresses") == ["192.0.2.9"]  # out of it: now
    assert store.get("@none").type == "server"
    store.prime("srv", None)  # outside a scope: nothing is kept
    assert store.get("@srv").get("ip_addresses") == ["192.0.2.9"]


def test_a_published_task_outlives_a_crash_of_the_database_right_after(
        tmp_path: Path, dsn: str, pg: PgCluster) -> None:
    """A publish commits without waiting for the disk, so that its worker hears of it
    sooner, and returns only once a synchronous commit after it has been flushed: a
    crash of the database the moment it returned loses nothing. The WAL writer is made
    lazy (10 s), so that nothing but that flush writes the commits out in time."""
    from hostctl.queues.model import Envelope, new_id
    from hostctl.queues.pgqueue import PgQueue
    from hostctl.times import utc_iso

    cluster.init(dsn)
    pg.psql("ALTER SYSTEM SET wal_writer_delay = '10s'")
    pg.psql("SELECT pg_reload_conf()")
    try:
        q = PgQueue(dsn, tmp_path / "w", tmp_path / "wlogs")
        ids = []
        for i in range(3):
            for n in range(5):
                env = Envelope(new_id(), "verify", f"@c{i}-{n}", {}, {}, 5, utc_iso())
                assert q.publish(env) == (env.id, True)
                ids.append(env.id)
            # the identical task's publish is told of the queued one: it is on the disk
            again = Envelope(new_id(), "verify", f"@c{i}-0", {}, {}, 5, utc_iso())
            assert q.publish(again) == (ids[-5], False)
            pg.restart("immediate")  # a crash: the WAL buffers are gone
            assert sorted(t.id for t in PgQueue(dsn, tmp_path / "r", tmp_path / "rlogs")
                          .tasks()) == sorted(ids)
            q.db.close()
    finally:
        pg.psql("ALTER SYSTEM RESET wal_writer_delay")
        pg.psql("SELECT pg_reload_conf()")


def test_a_publish_whose_connection_broke_after_its_commit_says_queued(
        tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The publish's flush is its second transaction: a connection that breaks there
    leaves a task committed, which a worker may run already. The publish looks on a new
    connection, makes it durable and says it was queued (a caller told it failed would
    queue it again); one that breaks before its commit says it failed."""
    from hostctl.database import DatabaseError
    from hostctl.queues import pgqueue
    from hostctl.queues.model import Envelope, new_id
    from hostctl.queues.pgqueue import PgQueue
    from hostctl.times import utc_iso

    cluster.init(dsn)
    q = PgQueue(dsn, tmp_path / "w", tmp_path / "wlogs")
    # the flush's statement ends its own session: the break after the commit
    monkeypatch.setattr(pgqueue, "_PUBLISHED",
                        "SELECT pg_terminate_backend(pg_backend_pid()), %s::text")
    env = Envelope(new_id(), "verify", "@a", {}, {}, 5, utc_iso())
    assert q.publish(env) == (env.id, True)
    assert [t.id for t in q.tasks()] == [env.id]
    again = Envelope(new_id(), "verify", "@a", {}, {}, 5, utc_iso())
    assert q.publish(again) == (env.id, False)  # the identical one, not a second
    # the break before the commit: nothing queued, and said so
    monkeypatch.setattr(pgqueue, "_PUBLISH", pgqueue._PUBLISH.replace(
        "(SELECT set_config('synchronous_commit', 'off', true))",
        "(SELECT pg_terminate_backend(pg_backend_pid()))"))
    lost = Envelope(new_id(), "verify", "@b", {}, {}, 5, utc_iso())
    with pytest.raises(DatabaseError):
        q.publish(lost)
    monkeypatch.undo()
    assert [t.id for t in q.tasks()] == [env.id]


def test_a_commit_that_fails_in_a_flushed_write_leaves_the_session_usable(dsn: str) -> None:
    """An error raised at the commit (a deferred constraint, a serialization failure)
    while the two transactions are sent together must not leave the connection in
    pipeline mode: the session's next statement works."""
    from hostctl.database import ASYNC, DatabaseError, Session

    db = Session(dsn)
    db.rows("CREATE TABLE at_commit (x int)")
    db.rows("CREATE FUNCTION at_commit_no() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RAISE EXCEPTION 'refused at commit'; END$$")
    db.rows("CREATE CONSTRAINT TRIGGER at_commit_t AFTER INSERT ON at_commit "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION at_commit_no()")
    for _ in range(3):
        # said as the commit's error, or (psycopg's pipeline one answer out of step
        # after it) as a connection whose state is not known: either way, one error
        with pytest.raises(DatabaseError):
            db.rows_heard_first("INSERT INTO at_commit SELECT 1 FROM " + ASYNC + " AS lazy")
        assert db.rows("SELECT count(*) FROM at_commit") == [(0,)]
    db.close()


def test_a_flushed_write_sends_its_flush_before_it_reads_an_answer(pg: PgCluster,
                                                                   dsn: str) -> None:
    """The write and the transaction that flushes it go to the server in one round
    trip: the flush is on its way before the client reads the write's answer, so the
    server starts the flush as soon as the write is committed (and heard by its
    listeners), without waiting for this process to read and answer. A proxy holds the
    server's answers until it has seen the flush's statement."""
    from hostctl.database import ASYNC, FLUSH, Session

    proxy = AnswersHeld(pg.port, FLUSH.split("(")[0].split()[-1].encode())
    db = Session(proxy.dsn(dsn))
    try:
        db.rows("CREATE TABLE flushed (x int)")
        proxy.hold()
        db.rows_heard_first("INSERT INTO flushed SELECT 1 FROM " + ASYNC + " AS lazy")
        assert not proxy.waited_out, "the flush was sent only after an answer was read"
        assert db.rows("SELECT count(*) FROM flushed") == [(1,)]
    finally:
        db.close()
        proxy.close()


def test_the_clusters_counts_and_depths_are_the_databases(tmp_path: Path, dsn: str) -> None:
    """Attempts counted by any host add up in one table; each server's queue reports
    its ready and delayed tasks and the oldest ready one's age."""
    import math

    from hostctl.queues.model import DURATION_BUCKETS, Envelope, new_id
    from hostctl.queues.pgqueue import PgQueue
    from hostctl.times import utc_iso

    cluster.init(dsn)
    web = {"@a.example": "web1", "@b.example": "web2"}
    hosts = [PgQueue(dsn, tmp_path / f"h{i}", tmp_path / f"l{i}",
                     route=lambda env: web[env.context]) for i in range(2)]
    hosts[0].tally("install", "success", 0.3)
    hosts[1].tally("install", "success", 20.0)
    hosts[1].tally("install", "error", None)
    got = {(t.type, t.outcome): t for t in hosts[0].tallies()}
    ok = got[("install", "success")]
    assert (ok.attempts, ok.timed, ok.seconds) == (2, 2, 20.3)
    assert dict(zip(DURATION_BUCKETS, ok.buckets, strict=True))[0.5] == 1
    assert dict(zip(DURATION_BUCKETS, ok.buckets, strict=True))[30.0] == 2
    assert ok.buckets[-1] == 2 and DURATION_BUCKETS[-1] == math.inf
    assert (got[("install", "error")].attempts, got[("install", "error")].timed) == (1, 0)
    hosts[0].publish(Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso()))
    hosts[0].publish(Envelope(new_id(), "verify", "@b.example", {}, {}, 5, utc_iso()),
                     delay=600)
    time.sleep(1.1)
    depths = {d.queue: d for d in hosts[1].depths()}
    assert (depths["web1"].ready, depths["web1"].deferred) == (1, 0)
    assert depths["web1"].oldest_age is not None and depths["web1"].oldest_age >= 1
    assert (depths["web2"].ready, depths["web2"].deferred, depths["web2"].oldest_age) == \
        (0, 1, None)


def test_metrics_in_a_cluster(run_hostctl: Any, home: Path, dsn: str, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    save_topology(run_hostctl, home, tmp_path / "www")
    in_cluster(home, dsn)
    assert run_hostctl("cluster", "init").code == 0
    assert run_hostctl("cluster", "import").code == 0
    assert run_hostctl("task", "add", "verify", "@srv").code == 0
    assert run_hostctl("wait-queue", "--once").code == 0
    res = run_hostctl("metrics")
    assert res.code == 0, res
    fams = {f.name: f for f in text_string_to_metric_families(res.out)}
    [sample] = fams["hostctl_task_attempts"].samples
    assert (sample.labels, sample.value) == ({"type": "verify", "outcome": "success"}, 1)


def test_the_clusters_listing_is_newest_first_page_by_page(
        tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hostctl.queues import pgqueue
    from hostctl.queues.model import Envelope, Status, TaskQuery, new_id
    from hostctl.times import utc_iso

    cluster.init(dsn)
    monkeypatch.setattr(pgqueue, "_PAGE", 3)  # pages of 3 rows: the paging is exercised
    q = pgqueue.PgQueue(dsn, tmp_path / "s", tmp_path / "l")
    made = []
    for i in range(8):
        env = Envelope(new_id(), "verify" if i % 2 else "install",
                       "@a.example" if i < 4 else "@b.example", {}, {}, 5, utc_iso())
        q.publish(env, dedup=False)
        made.append(env)
    newest = [e.id for e in reversed(made)]
    assert [t.id for t in q.recent(TaskQuery())] == newest
    assert [t.id for t in q.recent(TaskQuery(limit=5))] == newest[:5]
    assert [t.id for t in q.recent(TaskQuery(type="verify", limit=3))] == \
        [e.id for e in reversed(made) if e.type == "verify"][:3]
    assert [t.id for t in q.recent(TaskQuery(context="@a.example"))] == \
        [e.id for e in reversed(made[:4])]
    assert q.recent(TaskQuery(statuses=frozenset([Status.SUCCESS]))) == []
    assert q.recent(TaskQuery(since=time.time() + 60)) == []
    assert len(q.recent(TaskQuery(since=time.time() - 60))) == 8
