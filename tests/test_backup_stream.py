"""Backups are zstd archives whose database dump streams in, part by part, never staged on
disk; older gzip archives (their dump one member) restore as ever; a damaged or cut-off
zstd archive is refused in one line, nothing changed. On a real PostgreSQL."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import Lab, PgCluster, secrets_of, start_postgres, world_readable_dir

from hostctl.provision import backup
from hostctl.provision.backup import MANIFEST, open_tar


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = start_postgres()
    yield cluster
    cluster.stop()


@pytest.fixture
def lab(run_hostctl, home: Path, pg: PgCluster) -> Lab:
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-stream-www-"))
    lab.server("@db", *pg.server_fields()[2:], db="pgsql")
    lab.platform("@plat", "@db")
    return lab


def rows(pg: PgCluster, home: Path, site: str) -> list[str]:
    return pg.psql("SELECT id, md5(body) FROM notes ORDER BY id;",
                   database=secrets_of(home, site)["db"]["name"])


def fill(pg: PgCluster, home: Path, site: str, megabytes: int, *, random: bool) -> None:
    body = "md5(random()::text) || repeat(md5(random()::text), 31)" if random else \
        "repeat('the same words again ', 50)"
    pg.psql(f"INSERT INTO notes (body) SELECT {body} FROM generate_series(1, "
            f"{megabytes * 1024});", database=secrets_of(home, site)["db"]["name"])


def test_a_dump_of_many_parts_restores_row_for_row(lab: Lab, pg: PgCluster, home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup, "DUMP_PART", 64 << 10)  # the task's child inherits it
    site = lab.site("@parts.example")
    lab.must("install", site)
    fill(pg, home, site, 2, random=True)
    before = rows(pg, home, site)
    made = Path(lab.must("backup", site)["result"]["file"])
    assert made.name.endswith(".tar.zst") and made.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    with open_tar(made) as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile(MANIFEST))  # type: ignore[arg-type]
        sizes = [tar.getmember(n).size for n in names if n.startswith("database.sql.")]
    assert meta["dump"] == "database.sql" and meta["dump_parts"] == len(sizes) > 30
    assert set(sizes[:-1]) == {64 << 10} and 0 < sizes[-1] <= 64 << 10
    assert "database.sql" not in names  # only its parts
    pg.psql("DELETE FROM notes; INSERT INTO notes (body) VALUES ('after');",
            database=secrets_of(home, site)["db"]["name"])
    lab.must("restore", site, file=made.name)
    assert rows(pg, home, site) == before


def test_an_older_gzip_backup_restores(lab: Lab, pg: PgCluster, home: Path) -> None:
    site = lab.site("@old.example")
    lab.must("install", site)
    fill(pg, home, site, 1, random=True)
    before = rows(pg, home, site)
    made = Path(lab.must("backup", site)["result"]["file"])
    # the same backup as an older version wrote it: gzip, the dump one member, no parts
    old = made.with_name(made.name.replace(".tar.zst", ".tar.gz"))
    with open_tar(made) as src, tarfile.open(old, "w:gz") as dst:
        dump = b""
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name.startswith("database.sql."):
                assert data is not None
                dump += data.read()
            elif member.name == MANIFEST:
                assert data is not None
                doc = json.loads(data.read())
                del doc["dump_parts"]
                raw = json.dumps(doc).encode()
                member.size = len(raw)
                dst.addfile(member, io.BytesIO(raw))
            else:
                dst.addfile(member, data)
        info = tarfile.TarInfo("database.sql")
        info.size = len(dump)
        dst.addfile(info, io.BytesIO(dump))
    made.unlink()
    pg.psql("DELETE FROM notes;", database=secrets_of(home, site)["db"]["name"])
    lab.must("restore", site, file=old.name)
    assert rows(pg, home, site) == before
    # and a backup made now takes a name of its own beside it
    newer = Path(lab.must("backup", site)["result"]["file"])
    assert newer.suffixes[-2:] == [".tar", ".zst"] and old.exists()


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_damaged_zstd_backup_is_refused_in_one_line(lab: Lab, pg: PgCluster, home: Path,
                                                      damage: str) -> None:
    site = lab.site("@damaged.example")
    lab.must("install", site)
    fill(pg, home, site, 1, random=True)
    made = Path(lab.must("backup", site)["result"]["file"])
    data = bytearray(made.read_bytes())
    if damage == "cut":
        del data[len(data) // 2:]
    else:
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0xFF
    bad = made.with_name("bad-" + made.name)
    bad.write_bytes(bytes(data))
    before = rows(pg, home, site)
    doc = lab.task("restore", site, file=bad.name)
    assert doc["status"] == "error", doc
    error = doc["result"]["error"]
    assert "\n" not in error and bad.name in error, error
    assert rows(pg, home, site) == before
    assert not [p for p in (lab.www / "plat" / "sites").iterdir()
                if p.name.startswith(".damaged.example")]
    bad.unlink()  # (every backup left in a home must restore)


def test_the_dump_is_never_staged_on_disk(lab: Lab, pg: PgCluster, home: Path) -> None:
    """The backups folder on a 4 MiB file system, a dump of some 20 MiB that compresses
    well: a dump written there first could not fit; streamed, the backup is made."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    site = lab.site("@stream.example")
    lab.must("install", site)
    fill(pg, home, site, 20, random=False)
    folder = home / "backups"
    folder.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(folder)],
                   check=True, timeout=60)
    try:
        doc = lab.must("backup", site)
        made = Path(doc["result"]["file"])
        with open_tar(made) as tar:
            dumped = sum(m.size for m in tar.getmembers()
                         if m.name.startswith("database.sql."))
        assert dumped > 20 << 20 and made.stat().st_size < 2 << 20
    finally:
        # busy: something of the backup still holds a file there (a leak): fail, but
        # leave no mount behind
        done = subprocess.run(["umount", str(folder)], capture_output=True, timeout=60)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], timeout=60)
        assert done.returncode == 0, done.stderr


#: every transaction adds two rows: a consistent state holds an even count
WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
n = 0
while True:
    with db:
        db.execute("INSERT INTO pairs VALUES (?, ?)", (n, "a" * 2000))
        db.execute("INSERT INTO pairs VALUES (?, ?)", (n, "b" * 2000))
    n += 1
"""


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_an_sqlite_database_written_during_the_backup_is_one_consistent_state(
        run_hostctl, home: Path, journal: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQLite file streams in while a read transaction holds its shared lock (a WAL
    database is copied with the backup API first): a writer busy all along cannot make
    the backup hold half a transaction."""
    import sqlite3

    monkeypatch.setattr(backup, "DUMP_PART", 64 << 10)
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-stream-lite-"))
    lab.server("@lite", db="sqlite")
    lab.platform("@plat", "@lite")
    site = lab.site("@lite.example")
    lab.must("install", site)
    path = secrets_of(home, site)["db"]["path"]
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode={journal}")
        db.execute("CREATE TABLE pairs (n INTEGER, half TEXT)")
    # the writer is another process: the foreground task forks this one, which must
    # hold no thread then
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path])
    try:
        made = [Path(lab.must("backup", site)["result"]["file"]) for _ in range(3)]
    finally:
        writer.terminate()
        writer.wait(timeout=30)
    counts = []
    for archive in made:
        lab.must("restore", site, file=archive.name)
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)
            count = db.execute("SELECT count(*) FROM pairs").fetchone()[0]
            halves = db.execute("SELECT count(*) FROM pairs GROUP BY n HAVING count(*) != 2"
                                ).fetchall()
        assert count % 2 == 0 and not halves, (archive, count)
        counts.append(count)
    assert max(counts) > 0  # the writer was writing while they were made


def test_an_sqlite_database_whose_writer_died_mid_transaction_is_backed_up_as_committed(
        run_hostctl, home: Path) -> None:
    """A writer killed inside a transaction leaves a hot journal: the backup rolls it
    back (as the next SQLite reader must) and holds what was committed."""
    import signal
    import sqlite3

    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-stream-hot-"))
    lab.server("@lite", db="sqlite")
    lab.platform("@plat", "@lite")
    site = lab.site("@hot.example")
    lab.must("install", site)
    path = secrets_of(home, site)["db"]["path"]
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE kept (x TEXT)")
        db.execute("INSERT INTO kept VALUES ('committed')")
    dying = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA cache_size=1')\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "db.execute('INSERT INTO kept SELECT hex(randomblob(3000)) FROM "
        "(WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<500) "
        "SELECT i FROM c)')\n"
        "print('written', flush=True)\n"
        "time.sleep(600)\n"), path], stdout=subprocess.PIPE, text=True)
    assert dying.stdout is not None and dying.stdout.readline() == "written\n"
    dying.send_signal(signal.SIGKILL)
    dying.wait(timeout=30)
    assert Path(path + "-journal").stat().st_size > 0  # hot: the dead writer's
    made = Path(lab.must("backup", site)["result"]["file"])
    lab.must("restore", site, file=made.name)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT x FROM kept").fetchall() == [("committed",)]


def test_a_backup_waits_for_a_writer_that_holds_the_database_for_seconds(
        run_hostctl, home: Path) -> None:
    """A writer holding SQLite's exclusive lock for 7 s (longer than SQLite's default
    busy timeout of 5 s): the backup waits for it and holds its committed rows."""
    import sqlite3

    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-stream-held-"))
    lab.server("@lite", db="sqlite")
    lab.platform("@plat", "@lite")
    site = lab.site("@held.example")
    lab.must("install", site)
    path = secrets_of(home, site)["db"]["path"]
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE pairs (n INTEGER, half TEXT)")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE')\n"
         "db.execute(\"INSERT INTO pairs VALUES (1, 'a'), (1, 'b')\")\n"
         "print('held', flush=True)\n"
         "time.sleep(7)\n"
         "db.execute('COMMIT')\n", path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        made = Path(lab.must("backup", site)["result"]["file"])
    finally:
        holder.wait(timeout=60)
    lab.must("restore", site, file=made.name)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM pairs").fetchone() == (2,)
