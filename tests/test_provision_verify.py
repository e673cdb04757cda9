"""What the built-in verify checks, for a server, a platform and a site, passing and
failing; and the backup's progress bar, on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import (
    Lab,
    NginxServer,
    PgCluster,
    expect_answer,
    start_nginx,
    start_postgres,
    world_readable_dir,
)
from taskhelpers import hostctl_cmd


@pytest.fixture(scope="module")
def nginx() -> Iterator[NginxServer]:
    server = start_nginx(world_readable_dir("hostctl-nginx-"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = start_postgres()
    yield cluster
    cluster.stop()


@pytest.fixture
def lab(run_hostctl, home: Path, nginx: NginxServer, request) -> Iterator[Lab]:
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-www-"), nginx,
              request.node.name.lower()[:60])
    yield lab
    lab.close()


def checks(doc: dict) -> dict[str, str]:
    return {c["check"]: c["status"] for c in doc["result"]["checks"]}


def status_of(found: dict[str, str], words: str) -> str:
    hits = [s for c, s in found.items() if words in c]
    assert len(hits) == 1, (words, found)
    return hits[0]


def test_server_verify_passes_on_working_services(lab: Lab, nginx: NginxServer,
                                                  pg: PgCluster) -> None:
    lab.server("@srv")
    doc = lab.must("verify", "@srv")
    found = checks(doc)
    assert set(found.values()) == {"ok"}, found
    assert status_of(found, "test database created and dropped") == "ok"
    assert status_of(found, "nginx -t") == "ok"
    assert "SQLite" in next(c for c in found if "db service sqlite" in c)
    vhosts = Path(doc["result"]["vhost_dir"])
    for folder, mode in ((lab.home / "backups", 0o700), (lab.home / "secrets", 0o700),
                         (vhosts.parent.parent, 0o711), (vhosts, 0o755)):
        assert (folder.stat().st_mode & 0o777) == mode, folder
    assert vhosts.is_dir() and doc["result"]["include"] == f"include {vhosts}/*.conf;"

    lab.server("@db", *pg.server_fields()[2:], db="pgsql")
    found = checks(lab.must("verify", "@db"))
    assert status_of(found, "db service pgsql: test database") == "ok"
    assert "PostgreSQL" in next(c for c in found if "test database created" in c)
    assert not {d for d in pg.databases() if d.startswith("hostctl_verify")}


def test_server_verify_fails_on_a_refused_database_and_warns_on_a_missing_program(
        lab: Lab, pg: PgCluster, tmp_path: Path) -> None:
    fields = pg.server_fields()
    fields[fields.index("--db_passwd") + 1] = "not-the-password"
    lab.save("@bad", "--context_type", "server", *fields)
    doc = lab.task("verify", "@bad")
    assert doc["status"] == "error"
    assert status_of(checks(doc), "password authentication failed") == "FAILED"
    assert "not-the-password" not in lab.log(doc["id"])

    lab.save("@nonginx", "--context_type", "server", "--http_service_type", "nginx",
             "--nginx_binary", str(tmp_path / "missing" / "nginx"),
             "--db_service_type", "sqlite")
    doc = lab.must("verify", "@nonginx", status="warning")
    assert status_of(checks(doc), "http service nginx: not found") == "warning"
    res = lab.run("provision-verify", "@nonginx")
    assert res.code == 0  # a warning is a success with a note

    # psql not on PATH: Debian's own folder of PostgreSQL's programs is used
    lab.save("@nopg", "--context_type", "server", *pg.server_fields())
    env_path = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)
    try:
        doc = lab.task("verify", "@nopg")
    finally:
        os.environ["PATH"] = env_path
    assert doc["status"] == "success", lab.log(doc["id"])
    psql = next(c for c in checks(doc) if c.startswith("db service pgsql: psql"))
    assert "/usr/lib/postgresql/" in psql


def test_platform_verify(lab: Lab, tmp_path: Path) -> None:
    lab.server("@srv")
    root = lab.platform("@plat")
    found = checks(lab.must("verify", "@plat"))
    assert status_of(found, "manifest") == "ok"
    assert status_of(found, "sites folder") == "ok" and (root / "sites").is_dir()

    (root / "hostctl-app.toml").write_text(
        'format = 1\n[commands]\ninstall = ["{secret_thing}"]\n')
    doc = lab.task("verify", "@plat")
    assert doc["status"] == "error"
    assert status_of(checks(doc), "unknown placeholder {secret_thing}") == "FAILED"
    (root / "hostctl-app.toml").write_text(
        'format = 1\n[commands]\ninstall = ["{cron_key}"]\n')
    doc = lab.task("verify", "@plat")
    assert status_of(checks(doc), "is a secret") == "FAILED"
    (root / "hostctl-app.toml").write_text(
        'format = 1\n[commands]\ncron = ["no-such-program-here", "{uri}"]\n')
    doc = lab.must("verify", "@plat", status="warning")
    assert status_of(checks(doc), "no-such-program-here: not found") == "warning"

    lab.save("@gone", "--context_type", "platform", "--root", str(tmp_path / "nowhere"),
             "--web_server", "@srv")
    doc = lab.task("verify", "@gone")
    assert doc["status"] == "error"
    assert status_of(checks(doc), "is missing") == "FAILED"
    lab.save("@gone", "--root", str(root), "--manifest", str(tmp_path / "none.toml"))
    doc = lab.task("verify", "@gone")
    assert status_of(checks(doc), "none.toml is missing") == "FAILED"


def test_site_verify_regenerates_and_fixes(lab: Lab, nginx: NginxServer) -> None:
    lab.server("@srv")
    lab.platform("@plat")
    site = lab.site("@fix.example")
    lab.must("install", site)
    site_path = lab.www / "plat" / "sites" / "fix.example"
    vhost = lab.vhost("@srv", site)
    vhost.unlink()
    (site_path / "public").chmod(0o700)
    lab.secrets(site).chmod(0o644)
    if os.geteuid() == 0:  # nginx's workers (nobody) can no longer read the folder
        expect_answer(nginx, "fix.example", lambda s, b: s == 403, "a refusal")

    found = checks(lab.must("verify", site))
    assert set(found.values()) == {"ok"}, found
    assert status_of(found, "permissions fixed") == "ok"
    assert vhost.is_file() and (lab.secrets(site).stat().st_mode & 0o777) == 0o600
    assert ((site_path / "public").stat().st_mode & 0o777) == 0o755
    expect_answer(nginx, "fix.example", lambda s, b: s == 200 and "Welcome" in b,
                "the site to answer again")
    assert "permissions in order" in json.dumps(lab.must("verify", site)["result"])


def test_verify_never_opens_up_a_file_the_application_keeps_private(
        lab: Lab, nginx: NginxServer) -> None:
    """A settings file the application wrote 0600 (its database password, say) stays
    0600 through verify's permission fixes, so the web server cannot serve it; a file
    left writable by others loses that."""
    lab.server("@srv")
    lab.platform("@plat")
    site = lab.site("@private.example")
    lab.must("install", site)
    public = lab.www / "plat" / "sites" / "private.example" / "public"
    settings = public / "settings.ini"
    settings.write_text("password = hunter2\n")
    settings.chmod(0o600)
    (public / "index.html").chmod(0o666)
    lab.must("verify", site)
    assert (settings.stat().st_mode & 0o777) == 0o600
    assert ((public / "index.html").stat().st_mode & 0o777) == 0o644
    if os.geteuid() == 0:  # nginx's workers run as nobody: they cannot read it
        status, body, _ = nginx.get("private.example", "/settings.ini")
        assert status == 403 and "hunter2" not in body, (status, body)


def test_site_verify_fails_on_what_is_missing(lab: Lab, nginx: NginxServer) -> None:
    lab.server("@srv")
    root = lab.platform("@plat")
    site = lab.site("@lost.example")
    lab.must("install", site)
    (lab.home / "databases" / "srv" / "lostexample.sqlite").unlink()
    doc = lab.task("verify", site)
    assert doc["status"] == "error"
    assert status_of(checks(doc), "database lostexample") == "FAILED"

    import shutil

    shutil.rmtree(root / "sites" / "lost.example")
    doc = lab.task("verify", site)
    assert status_of(checks(doc), "site folder") == "FAILED"

    shutil.rmtree(root)
    doc = lab.task("verify", site)
    assert status_of(checks(doc), "platform root") == "FAILED"


def test_site_verify_of_a_site_moved_by_hand_says_to_migrate(lab: Lab, nginx) -> None:
    lab.server("@srv")
    lab.platform("@plat")
    lab.platform("@other")
    site = lab.site("@moved.example")
    lab.must("install", site)
    lab.save(site, "--platform", "@other")
    doc = lab.task("verify", site)
    assert doc["status"] == "error"
    assert status_of(checks(doc), "use migrate") == "FAILED"


def test_backup_progress_bar_on_a_terminal_only(lab: Lab, home: Path) -> None:
    lab.server("@srv")
    lab.platform("@plat")
    site = lab.site("@big.example")
    lab.must("install", site)
    (lab.www / "plat/sites/big.example/blob").write_bytes(os.urandom(2_000_000))
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([*hostctl_cmd(), "provision-backup", site], stdin=slave,
                                stdout=slave, stderr=slave,
                                env={**os.environ, "HOSTCTL_HOME": str(home)})
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has gone
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    text = out.decode(errors="replace")
    assert "backup of @big.example: [" in text and "100%" in text, text
    # the database's dump is counted too, as it goes (its size is known only at its end)
    assert re.search(r"backup of @big\.example: database: \d+(\.\d)? (B|KiB|MiB)", text), text
    doc = json.loads(lab.ok("task", "list", "--json").out)[0]
    assert doc["type"] == "backup" and doc["status"] == "success"
    log = lab.log(doc["id"])
    assert "backup of @big.example: [" not in log and "100%" not in log
    assert "made for backup" in log
    # through the queue (no terminal): no bar anywhere
    queued = lab.must("backup", site, "queue")
    assert "%]" not in lab.log(queued["id"]) and "100%" not in lab.log(queued["id"])
