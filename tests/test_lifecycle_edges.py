"""The site lifecycle's edges: a site whose database server is gone can still be deleted;
a clone never merges into a context that appeared meanwhile; a platform delete never
removes a site a task is running on; a failed grant on PostgreSQL leaves neither the
database nor its role behind."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import (
    Lab,
    PgCluster,
    last_task,
    secrets_of,
    start_postgres,
    world_readable_dir,
)
from taskhelpers import hostctl_cmd, wait_for

from hostctl.contexts.store import TomlStore
from hostctl.errors import Conflict
from hostctl.paths import Paths


@pytest.fixture
def lab(run_hostctl, home: Path) -> Lab:
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-www-"))
    lab.server("@srv")
    lab.platform("@plat")
    return lab


def test_a_site_whose_database_server_is_gone_is_deleted_all_the_same(lab: Lab) -> None:
    lab.server("@db")
    site = lab.site("@orphan.example", "@plat", "--db_server", "@db")
    lab.must("install", site)
    site_path = lab.www / "plat" / "sites" / "orphan.example"
    assert site_path.is_dir()
    # the site now points elsewhere, so nothing refers to @db and it can be deleted
    lab.save(site, "--db_server", "@srv")
    lab.ok("provision-save", "@db", "--delete")
    lab.must("disable", site)
    doc = lab.must("delete", site, status="warning")
    assert "database orphanexample on @db" in doc["result"]["database_left"], doc
    assert not site_path.exists() and not lab.context_file(site).exists()
    assert Path(doc["result"]["backup_file"]).is_file()


def test_a_clone_never_merges_into_a_context_made_meanwhile(home: Path, lab: Lab) -> None:
    store = TomlStore(Paths(home))
    lab.site("@taken.example")
    with pytest.raises(Conflict, match="exists already"):
        store.save("@taken.example", {"language": "fr"}, "site", create_only=True)
    shown = json.loads(lab.ok("context", "show", "@taken.example", "--json").out)
    assert shown["fields"]["language"] == "en"  # unchanged


SLOW = 'touch "$0.started"; while [ ! -e "$0.go" ]; do sleep 0.05; done'


def test_platform_delete_refuses_while_a_task_runs_on_one_of_its_sites(
        lab: Lab, home: Path, tmp_path: Path) -> None:
    from taskhelpers import write_config

    flag = tmp_path / "flag"
    write_config(home, {"tasks": {"slow": {"command": ["sh", "-c", SLOW, str(flag)],
                                           "context_types": ["site"]}}})
    site = lab.site("@busy.example")
    lab.must("install", site)
    env = {**os.environ, "HOSTCTL_HOME": str(home)}
    task = subprocess.Popen([*hostctl_cmd(), "provision-slow", site], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the slow task to start")
        doc = lab.task("delete", "@plat", force="yes")
        assert doc["status"] == "error", doc
        assert "a task is running on @busy.example" in json.dumps(doc["result"]), doc
        assert lab.context_file(site).exists()
        assert (lab.www / "plat" / "sites" / "busy.example").is_dir()
    finally:
        Path(f"{flag}.go").touch()
        assert task.wait(timeout=60) == 0
    lab.must("disable", site)
    lab.must("delete", "@plat", force="yes")  # once it has ended
    assert not lab.context_file(site).exists()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = start_postgres()
    yield cluster
    cluster.stop()


FAILING_GRANT = """#!{python}
import os, sys
sql = sys.stdin.read()
if "GRANT ALL ON DATABASE" in sql:
    print("ERROR:  permission denied (a grant that fails)", file=sys.stderr)
    sys.exit(3)
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    os.write(w, sql.encode())
    os._exit(0)
os.close(w)
os.dup2(r, 0)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def test_a_failed_grant_leaves_neither_database_nor_role(
        run_hostctl, home: Path, pg: PgCluster, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from hostctl.provision.services.pgsql import client

    real = client("psql")
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    wrapper = wrappers / "psql"
    wrapper.write_text(FAILING_GRANT.format(python=sys.executable, real=real))
    wrapper.chmod(stat.S_IRWXU)
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-www-"))
    lab.server("@db", *pg.server_fields()[2:], db="pgsql")
    lab.platform("@plat", "@db")
    site = lab.site("@grant.example")
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    assert shutil.which("psql") == str(wrapper)
    doc = lab.task("install", site)
    assert doc["status"] == "error", doc
    assert "granting grantexample to its role only" in json.dumps(doc["result"]), doc
    monkeypatch.undo()
    assert "grantexample" not in pg.databases()
    assert "grantexample" not in pg.roles()


def test_a_failed_reinstall_brings_the_old_installation_back(
        lab: Lab, home: Path, tmp_path: Path) -> None:
    import sqlite3

    from provisionhelpers import sqlite_rows

    flags = tmp_path / "flags"
    lab.platform("@flaky", env={"APP_FLAGS": str(flags)})
    site = lab.site("@keep.example", "@flaky")
    lab.must("install", site)
    site_path = lab.www / "flaky" / "sites" / "keep.example"
    (site_path / "public" / "index.html").write_text("the old site\n")
    before = secrets_of(home, site)
    with sqlite3.connect(before["db"]["path"]) as db:
        db.execute("INSERT INTO notes (body) VALUES ('written by the old site')")
    rows = sqlite_rows(before["db"]["path"])
    (tmp_path / "flags.fail").touch()  # the application's install now fails, at its end
    doc = lab.task("install", site, reinstall="yes")
    assert doc["status"] == "error", doc
    assert secrets_of(home, site) == before  # the same record, database and password
    assert sqlite_rows(before["db"]["path"]) == rows
    assert (site_path / "public" / "index.html").read_text() == "the old site\n"
    assert not (lab.www / "flaky" / "sites" / ".keep.example.reinstall").exists()
    assert sorted(p.name for p in (home / "databases" / "srv").iterdir()) == \
        [Path(before["db"]["path"]).name]


def test_two_clones_to_one_new_name_at_once_exactly_one_wins(lab: Lab, home: Path) -> None:
    """Both clones pass the early check of the new name before either saves (the contexts
    lock, held here, keeps their saves waiting until both have made their backups, which
    comes after that check): one must win, the other fail and leave the winner whole."""
    import fcntl

    first, second = lab.site("@one.example"), lab.site("@two.example")
    lab.must("install", first)
    lab.must("install", second)
    backups = home / "backups"
    before = set(backups.rglob("*")) if backups.exists() else set()
    env = {**os.environ, "HOSTCTL_HOME": str(home)}
    lock = os.open(home / "contexts" / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    procs = []
    try:
        for source in (first, second):
            procs.append(subprocess.Popen(
                [*hostctl_cmd(), "provision-clone", source, "--new_uri", "copy.example",
                 "--new_name", "copy"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def both_backed_up() -> bool:
            made = {p for p in backups.rglob("*.tar*") if p not in before}
            return len(made) >= 2
        wait_for(both_backed_up, 60, "both clones to pass the check and make their backups")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        codes = sorted(p.wait(timeout=120) for p in procs)
    assert codes[0] == 0 and codes[1] != 0, codes
    docs = [last_task(lab.run, "clone", source) for source in (first, second)]
    won = [d for d in docs if d["status"] == "success"]
    lost = [d for d in docs if d["status"] != "success"]
    assert len(won) == 1 and len(lost) == 1, docs
    assert "@copy exists already" in json.dumps(lost[0]["result"]), lost[0]
    # the winner's site stands whole: its context, its record, its folder
    assert lab.context_file("@copy").exists()
    record = secrets_of(home, "@copy")
    assert Path(record["site_path"]).is_dir()
    shown = json.loads(lab.ok("context", "show", "@copy", "--json").out)
    assert shown["fields"]["uri"] == "copy.example"
