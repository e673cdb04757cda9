"""Sites on a real MariaDB (a private server on its own socket and a loopback port, set up
as Debian sets it up: root by unix_socket, no password): install, backup and restore row
for row, clone with its own database and user, delete; a site's user reaches only its
own database; the password is never on a command line nor in a task's log."""

from __future__ import annotations

import os
import subprocess
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
        f.write(f"[client]\nuser={db['user']}\npassword={db['password']}\n"
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
