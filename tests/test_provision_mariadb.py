"""Sites on a real MariaDB (a private server on its own socket and a loopback port, set up
as Debian sets it up: root by unix_socket, no password): install, backup and restore row
for row, clone with its own database and user, delete; a site's user reaches only its
own database; the password is never on a command line nor in a task's log."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import Lab, MariadbServer, secrets_of, start_mariadb, world_readable_dir


@pytest.fixture(scope="module")
def my() -> Iterator[MariadbServer]:
    server = start_mariadb()
    yield server
    server.stop()


@pytest.fixture
def lab(run_hostctl, home: Path, my: MariadbServer) -> Lab:
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-www-"))
    lab.server("@my", *my.server_fields()[2:], db="mariadb")
    lab.platform("@plat", "@my")
    return lab


def notes(my: MariadbServer, home: Path, site: str) -> list[str]:
    return my.sql("SELECT id, body FROM notes ORDER BY id;",
                  database=secrets_of(home, site)["db"]["name"])


def as_site_user(my: MariadbServer, home: Path, site: str,
                 sql: str) -> subprocess.CompletedProcess[str]:
    db = secrets_of(home, site)["db"]
    cnf = home.parent / f"{db['name']}.cnf"
    fd = os.open(cnf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"[client]\ndefault-character-set=utf8mb4\n"
                f"user={db['user']}\npassword={db['password']}\n"
                f"host=127.0.0.1\nport={my.port}\nprotocol=tcp\n")
    return subprocess.run(["mariadb", f"--defaults-extra-file={cnf}", "--batch",
                           "--skip-column-names"], input=sql, capture_output=True, text=True,
                          timeout=60)


def test_verify_install_backup_restore_clone_delete(lab: Lab, my: MariadbServer,
                                                    home: Path) -> None:
    checks = lab.must("verify", "@my")["result"]["checks"]
    assert any("MariaDB" in c["check"] and c["status"] == "ok" for c in checks), checks

    seen: set[str] = set()
    stop = threading.Event()

    def sample() -> None:  # every command line while the tasks run
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        seen.add(Path(f"/proc/{pid}/cmdline").read_bytes().decode(
                            "utf-8", "replace"))
                    except OSError:
                        pass

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        site = lab.site("@my.example")
        result = lab.must("install", site)["result"]
        assert (result["db_type"], result["db_name"]) == ("mariadb", "myexample")
        assert notes(my, home, site) == ["1\tfirst note", "2\tsecond note"]
        assert {"myexample@localhost", "myexample@127.0.0.1"} <= my.users()

        # the site's user reaches its own database, and no other
        own = as_site_user(my, home, site, "SELECT COUNT(*) FROM myexample.notes;")
        assert own.returncode == 0 and own.stdout.strip() == "2", own
        other = as_site_user(my, home, site, "SELECT COUNT(*) FROM mysql.user;")
        assert other.returncode != 0 and "denied" in other.stderr, other

        backup = lab.must("backup", site)["result"]["file"]
        my.sql("INSERT INTO notes (body) VALUES ('after the backup');", database="myexample")
        lab.must("restore", site, file=Path(backup).name)
        assert notes(my, home, site) == ["1\tfirst note", "2\tsecond note"]

        lab.must("clone", site, new_uri="copy.example", new_name="copy")
        copy = secrets_of(home, "@copy")["db"]
        assert copy["name"] != "myexample" and copy["user"] == copy["name"]
        assert notes(my, home, "@copy") == notes(my, home, site)

        password = secrets_of(home, site)["db"]["password"]
        for name in (site, "@copy"):
            lab.must("disable", name)
            lab.must("delete", name)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert "myexample" not in my.databases() and copy["name"] not in my.databases()
    assert not {u for u in my.users() if u.startswith(("myexample@", f"{copy['name']}@"))}
    assert not any(password in line for line in seen)
    logs = "".join(p.read_text(errors="replace") for p in (home / "logs").glob("*.log"))
    assert password not in logs


def test_restore_brings_back_views_triggers_routines_and_any_bytes(
        lab: Lab, my: MariadbServer, home: Path) -> None:
    """MariaDB moves neither views nor tables with triggers to another database, and a
    dump of binary data is not UTF-8: a restore must bring all of it back as it was."""
    site = lab.site("@obj.example")
    lab.must("install", site)
    made = as_site_user(my, home, site, """USE objexample;
        CREATE TABLE bin (id INT PRIMARY KEY, data BLOB, text VARCHAR(20));
        INSERT INTO bin VALUES (1, UNHEX(CONCAT('00FF80C3', REPEAT('FE', 3), '0D0A5C27')),
                                'caf\u00e9 \U0001F600');
        CREATE TABLE seen (body TEXT);
        CREATE TRIGGER noted AFTER INSERT ON notes FOR EACH ROW
            INSERT INTO seen VALUES (NEW.body);
        CREATE VIEW recent AS SELECT body FROM notes WHERE id > 1;
        CREATE FUNCTION twice (n INT) RETURNS INT DETERMINISTIC RETURN n * 2;
        INSERT INTO notes (body) VALUES ('third note');""")
    assert made.returncode == 0, made.stderr

    def state() -> list[str]:
        return my.sql("SELECT id, body FROM notes ORDER BY id; SELECT * FROM seen; "
                      "SELECT * FROM recent; SELECT twice(21); "
                      "SELECT HEX(data), HEX(text) FROM bin; "
                      "SELECT trigger_name FROM information_schema.triggers "
                      "WHERE trigger_schema = 'objexample';", database="objexample")

    before = state()
    assert "third note" in before and "42" in before and "noted" in before, before
    backup = lab.must("backup", site)["result"]["file"]
    my.sql("INSERT INTO notes (body) VALUES ('after the backup'); DROP VIEW recent; "
           "DROP FUNCTION twice; UPDATE bin SET data = 'x';", database="objexample")
    lab.must("restore", site, file=Path(backup).name)
    assert state() == before
    assert not {"objexample_load", "objexample_old"} & my.databases()


def broken_copy(backup: Path, tail: bytes) -> Path:
    """A copy of a backup whose dump ends with ``tail`` (a gzipped one: older backups
    are read as ever)."""
    from hostctl.provision.backup import open_tar

    copy = backup.with_name("broken-" + backup.name.replace(".tar.zst", ".tar.gz"))
    with open_tar(backup) as src:
        members = src.getmembers()
        parts = sorted(m.name for m in members if m.name.startswith("database.sql"))
        with tarfile.open(copy, "w:gz") as dst:
            for member in members:
                data = src.extractfile(member) if member.isfile() else None
                if member.name == parts[-1] and data is not None:
                    body = data.read() + tail
                    member.size = len(body)
                    dst.addfile(member, io.BytesIO(body))
                else:
                    dst.addfile(member, data)
    return copy


@pytest.mark.parametrize("trigger", [False, True], ids=["tables", "with-a-trigger"])
def test_a_dump_that_does_not_load_leaves_the_database_as_it_was(
        lab: Lab, my: MariadbServer, home: Path, trigger: bool) -> None:
    site = lab.site("@broken.example")
    lab.must("install", site)
    name = secrets_of(home, site)["db"]["name"]
    if trigger:
        my.sql("CREATE TABLE seen (body TEXT); CREATE TRIGGER noted AFTER INSERT ON notes "
               "FOR EACH ROW INSERT INTO seen VALUES (NEW.body);", database=name)
    backup = Path(lab.must("backup", site)["result"]["file"])
    my.sql("INSERT INTO notes (body) VALUES ('after the backup');", database=name)
    before = notes(my, home, site)
    for tail in (b"\nINSERT INTO no_such_table VALUES (1);\n", b"\nCREATE TABLE (\n",
                 b"\nINSERT INTO notes VALUES (1, 'a duplicate key');\n"):
        copy = broken_copy(backup, tail)
        doc = lab.task("restore", site, file=copy.name)
        assert doc["status"] == "error", doc
        assert notes(my, home, site) == before
        assert not {f"{name}_load", f"{name}_old"} & my.databases()


def test_an_administrator_password_any_characters_and_migrate(
        lab: Lab, my: MariadbServer, home: Path) -> None:
    """Over TCP with a password that option files would cut at '#' or strip of its
    quotes; and a site moved to that server context (another server to hostctl)."""
    password = ' a#b "c" \\d \'e\' ;f '
    my.sql(f"CREATE USER IF NOT EXISTS tcpadmin@'127.0.0.1' IDENTIFIED BY "
           f"'{password.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}';"
           "GRANT ALL ON *.* TO tcpadmin@'127.0.0.1' WITH GRANT OPTION;")
    lab.server("@tcp", "--db_host", "127.0.0.1", "--db_port", str(my.port),
               "--db_user", "tcpadmin", "--db_passwd", password, db="mariadb")
    checks = lab.must("verify", "@tcp")["result"]["checks"]
    assert any("MariaDB" in c["check"] and c["status"] == "ok" for c in checks), checks

    site = lab.site("@move.example")
    lab.must("install", site)
    old = secrets_of(home, site)["db"]
    lab.must("migrate", site, db_server="@tcp")
    new = secrets_of(home, site)["db"]
    assert new["server"] == "@tcp" and new["name"] != old["name"]
    assert notes(my, home, site) == ["1\tfirst note", "2\tsecond note"]
    assert old["name"] not in my.databases()
    assert not {u for u in my.users() if u.startswith(f"{old['user']}@")}
    lab.must("disable", site)
    lab.must("delete", site)
    assert new["name"] not in my.databases()
    logs = "".join(p.read_text(errors="replace") for p in (home / "logs").glob("*.log"))
    assert "a#b" not in logs


def test_a_reload_that_fails_puts_the_old_content_back(lab: Lab, my: MariadbServer,
                                                      home: Path) -> None:
    """A site with a trigger is reloaded in place (no atomic swap): a dump that loads into
    the fresh database but fails in the site's own leaves it as it was."""
    site = lab.site("@reload.example")
    lab.must("install", site)
    name = secrets_of(home, site)["db"]["name"]
    my.sql("CREATE TABLE seen (body TEXT); CREATE TRIGGER noted AFTER INSERT ON notes "
           "FOR EACH ROW INSERT INTO seen VALUES (NEW.body);", database=name)
    backup = Path(lab.must("backup", site)["result"]["file"])
    my.sql("INSERT INTO notes (body) VALUES ('after the backup');", database=name)
    before = my.sql("SELECT * FROM notes; SELECT * FROM seen; SELECT trigger_name FROM "
                    "information_schema.triggers WHERE trigger_schema = DATABASE();",
                    database=name)
    only_in_the_site = (b"\nSET @q = IF(DATABASE() LIKE '%\\_load', 'SELECT 1', "
                        b"'SELECT * FROM no_such_table');\nPREPARE s FROM @q;\n")
    doc = lab.task("restore", site, file=broken_copy(backup, only_in_the_site).name)
    assert doc["status"] == "error" and "is as it was" in doc["result"]["error"], doc
    assert my.sql("SELECT * FROM notes; SELECT * FROM seen; SELECT trigger_name FROM "
                  "information_schema.triggers WHERE trigger_schema = DATABASE();",
                  database=name) == before
    assert not {f"{name}_load", f"{name}_old"} & my.databases()


def test_tables_with_any_name_are_swapped_in(lab: Lab, my: MariadbServer, home: Path) -> None:
    site = lab.site("@names.example")
    lab.must("install", site)
    name = secrets_of(home, site)["db"]["name"]
    odd = ["we`ird", "sp ace", "semi;colon", "quo'te", "\u00e9t\u00e9"]
    my.sql("SET NAMES utf8mb4;" + "".join(
        f"CREATE TABLE `{t.replace('`', '``')}` (n INT); INSERT INTO `{t.replace('`', '``')}` "
        "VALUES (7);" for t in odd), database=name)
    backup = lab.must("backup", site)["result"]["file"]
    my.sql("DROP TABLE `we``ird`;", database=name)
    lab.must("restore", site, file=Path(backup).name)
    tables = my.sql("SET NAMES utf8mb4; SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = DATABASE();", database=name)
    assert set(odd) | {"notes"} == {t.replace("\\\\", "\\") for t in tables}, tables
