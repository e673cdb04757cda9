"""The site lifecycle on a real nginx (started by the tests on a loopback port) with
SQLite databases: install, disable, enable, delete, clone, migrate, backup, restore,
login-reset and cron, each in the foreground and through the queue; a failing install
leaves nothing behind; guarded contexts; retention."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import (
    Lab,
    NginxServer,
    expect_answer,
    make_platform,
    secrets_of,
    sqlite_rows,
    start_nginx,
    tree,
    world_readable_dir,
)
from taskhelpers import write_config

from hostctl.provision.backup import open_tar


@pytest.fixture(scope="module")
def nginx() -> Iterator[NginxServer]:
    server = start_nginx(world_readable_dir("hostctl-nginx-"))
    yield server
    server.stop()


@pytest.fixture
def lab(run_hostctl, home: Path, nginx: NginxServer, request) -> Iterator[Lab]:
    www = world_readable_dir("hostctl-www-")
    name = request.node.name.replace("[", "-").replace("]", "").lower()[:60]
    lab = Lab(run_hostctl, home, www, nginx, name)
    lab.server()
    lab.platform()
    yield lab
    lab.close()


def answers(nginx: NginxServer, host: str, text: str) -> None:
    expect_answer(nginx, host, lambda s, b: s == 200 and text in b, f"{host} to show {text!r}")


def gone(nginx: NginxServer, host: str) -> None:
    expect_answer(nginx, host, lambda s, b: s == 404 and b == "no such site\n",
                f"{host} to be gone")


def disabled(nginx: NginxServer, host: str) -> None:
    expect_answer(nginx, host, lambda s, b: s == 503 and "is disabled" in b,
                f"{host} to show the disabled page")


@pytest.mark.parametrize("mode", ["foreground", "queue"])
def test_every_site_task_in_the_foreground_and_through_the_queue(lab: Lab, nginx, mode):
    site = lab.site("@shop.example", "@plat", "--aliases", "www.shop.example")
    lab.must("install", site, mode)
    answers(nginx, "shop.example", "Welcome to shop.example")
    answers(nginx, "www.shop.example", "Welcome to shop.example")
    secrets = secrets_of(lab.home, site)
    db_file = Path(secrets["db"]["path"])
    assert sqlite_rows(db_file) == [(1, "first note"), (2, "second note")]

    verify = lab.must("verify", site, mode)
    assert {c["status"] for c in verify["result"]["checks"]} == {"ok"}

    backup = lab.must("backup", site, mode)["result"]
    assert Path(backup["file"]).is_file() and backup["size"] == Path(backup["file"]).stat().st_size

    link = lab.must("login-reset", site, mode)["result"]["login_link"]
    assert link.startswith("http://shop.example/login/one-time-")

    lab.must("cron", site, mode)
    assert "cron ran for shop.example" in (lab.www / "plat/sites/shop.example/cron.log").read_text()

    lab.must("disable", site, mode)
    disabled(nginx, "shop.example")
    lab.must("enable", site, mode)
    answers(nginx, "shop.example", "Welcome to shop.example")

    lab.must("clone", site, mode, new_uri="copy.example")
    answers(nginx, "copy.example", "Welcome to shop.example")

    lab.platform("@plat2", marker="second platform")
    lab.must("migrate", "@copy.example", mode, platform="@plat2")
    answers(nginx, "copy.example", "Welcome to shop.example")
    assert not (lab.www / "plat/sites/copy.example").exists()
    assert (lab.www / "plat2/sites/copy.example/public/index.html").is_file()

    (lab.www / "plat/sites/shop.example/public/index.html").write_text("changed\n")
    lab.must("restore", site, mode, file=Path(backup["file"]).name)
    answers(nginx, "shop.example", "Welcome to shop.example")

    lab.must("disable", site, mode)
    deleted = lab.must("delete", site, mode)["result"]
    gone(nginx, "shop.example")
    assert Path(deleted["backup_file"]).is_file()
    assert not lab.context_file(site).exists() and not lab.secrets(site).exists()
    assert not db_file.exists()


def test_install_answers_disable_enable_delete_leaves_the_backup(lab: Lab, nginx) -> None:
    site = lab.site("@a.example")
    installed = lab.must("install", site)["result"]
    vhost = lab.vhost("@srv", site)
    assert installed["vhost"] == str(vhost) and vhost.is_file()
    answers(nginx, "a.example", "Welcome to a.example")
    site_path = lab.www / "plat" / "sites" / "a.example"
    # served by nginx's unprivileged worker: the folder is readable by strangers
    assert (site_path.stat().st_mode & 0o755) == 0o755
    assert ((site_path / "public" / "index.html").stat().st_mode & 0o644) == 0o644

    lab.must("disable", site)
    disabled(nginx, "a.example")
    assert lab.ok("context", "show", site, "--json").out.count('"site_enabled": false') == 1
    lab.must("enable", site)
    answers(nginx, "a.example", "Welcome to a.example")

    refused = lab.task("delete", site)
    assert refused["status"] == "error"
    assert "disable it before deleting it" in refused["result"]["error"]
    assert vhost.exists() and lab.context_file(site).exists()

    lab.must("disable", site)
    result = lab.must("delete", site)["result"]
    gone(nginx, "a.example")
    backup = Path(result["backup_file"])
    assert backup.parent == lab.home / "backups" and backup.name.startswith("a.example-")
    with open_tar(backup) as tar:
        names = tar.getnames()
        assert "files/public/index.html" in names and "database.sqlite.000000" in names
        meta = json.load(tar.extractfile("hostctl-backup.json"))  # type: ignore[arg-type]
    assert meta["site"] == "@a.example" and meta["reason"] == "delete"
    assert not site_path.exists() and not vhost.exists()
    assert not lab.secrets(site).exists() and not lab.context_file(site).exists()
    assert list((lab.home / "databases" / "srv").iterdir()) == []


def test_a_failing_install_leaves_nothing_behind(lab: Lab, nginx, tmp_path: Path) -> None:
    flags = tmp_path / "flags"
    (tmp_path / "flags.fail").touch()
    lab.platform("@failing", env={"APP_FLAGS": str(flags)})
    site = lab.site("@broken.example", "@failing")
    context_before = lab.context_file(site).read_bytes()
    root = lab.www / "failing"
    before = tree(root)
    home_before = sorted(p.name for p in (lab.home / "contexts").iterdir())

    doc = lab.task("install", site)
    assert doc["status"] == "error"
    log = lab.log(doc["id"])
    assert "install failed on purpose" in log and "undoing" in log
    # the install command ran (it wrote the page and a table) and all of it is gone
    assert "installing broken.example" in log
    assert tree(root) == before  # no site folder, not even ROOT/sites
    assert lab.context_file(site).read_bytes() == context_before
    assert sorted(p.name for p in (lab.home / "contexts").iterdir()) == home_before
    assert not lab.secrets(site).exists()
    assert not lab.vhost("@srv", site).exists()
    assert list((lab.home / "databases" / "srv").iterdir()) == []
    gone(nginx, "broken.example")

    # the same site installs once the step works
    (tmp_path / "flags.fail").unlink()
    lab.must("install", site)
    answers(nginx, "broken.example", "Welcome to broken.example")


def test_a_refused_vhost_undoes_the_install(lab: Lab, nginx) -> None:
    site = lab.site("@late.example")
    vhosts = lab.vhost("@srv", site).parent
    vhosts.mkdir(parents=True, exist_ok=True)
    (vhosts / "zz-broken.conf").write_text("server { nonsense }\n")
    try:
        doc = lab.task("install", site)
    finally:
        (vhosts / "zz-broken.conf").unlink()
    assert doc["status"] == "error" and "nginx -t" in doc["result"]["error"]
    assert not (lab.www / "plat" / "sites").exists()
    assert not lab.secrets(site).exists() and not lab.vhost("@srv", site).exists()
    assert list((lab.home / "databases" / "srv").iterdir()) == []


def test_install_refuses_an_installed_site_unless_reinstall(lab: Lab, nginx) -> None:
    site = lab.site("@again.example")
    lab.must("install", site)
    first = secrets_of(lab.home, site)["db"]["path"]
    refused = lab.task("install", site)
    assert refused["status"] == "error"
    assert "installed already" in refused["result"]["error"]
    page = lab.www / "plat/sites/again.example/public/index.html"
    page.write_text("edited\n")
    redone = lab.must("install", site, reinstall="yes")["result"]
    assert Path(redone["backup_file"]).is_file()  # the old one was backed up first
    assert "Welcome" in page.read_text()
    # a fresh database beside the old one while the new installation is made; then the
    # old one goes
    now = secrets_of(lab.home, site)["db"]["path"]
    assert now != first and not Path(first).exists()
    assert sqlite_rows(now) == [(1, "first note"), (2, "second note")]
    assert not (lab.www / "plat/sites/.again.example.reinstall").exists()
    bad = lab.task("install", site, reinstall="perhaps")
    assert bad["status"] == "error" and "takes yes or no" in bad["result"]["error"]


def test_a_locked_platform_takes_no_new_sites(lab: Lab, nginx) -> None:
    lab.site("@one.example")
    lab.must("install", "@one.example")
    lab.platform("@frozen")
    lab.must("lock", "@frozen")
    lab.site("@new.example", "@frozen")
    for ttype, context, options in (("install", "@new.example", {}),
                                    ("migrate", "@one.example", {"platform": "@frozen"})):
        doc = lab.task(ttype, context, **options)
        assert doc["status"] == "error", doc
        assert "is locked" in doc["result"]["error"]
    lab.must("lock", "@plat")
    doc = lab.task("clone", "@one.example", new_uri="two.example")
    assert doc["status"] == "error" and "is locked" in doc["result"]["error"]
    assert not lab.context_file("@two.example").exists()
    # its own sites go on
    lab.must("verify", "@one.example")
    lab.must("backup", "@one.example")
    lab.must("unlock", "@frozen")
    lab.must("install", "@new.example")


def test_protected_sites_refuse_disable_and_delete(lab: Lab, nginx) -> None:
    site = lab.site("@guarded.example", "@plat", "--protected", "yes")
    lab.must("install", site)
    for ttype in ("disable", "delete"):
        doc = lab.task(ttype, site)
        assert doc["status"] == "error" and "is protected" in doc["result"]["error"]
    answers(nginx, "guarded.example", "Welcome")
    lab.save(site, "--protected", "no")
    lab.must("disable", site)
    doc = lab.task("delete", site, force="yes")
    assert doc["status"] == "error" and "applies to a platform" in doc["result"]["error"]
    lab.must("delete", site)


def test_web_group_owns_the_site_folder(lab: Lab, nginx) -> None:
    import grp

    group = next((g for g in ("nogroup", "nobody") if _group_exists(g)), None)
    if group is None or os.geteuid() != 0:
        pytest.skip("needs root and a nogroup or nobody group")
    lab.save("@srv", "--web_group", group)
    site = lab.site("@group.example")
    lab.must("install", site)
    site_path = lab.www / "plat" / "sites" / "group.example"
    gid = grp.getgrnam(group).gr_gid
    for path in (site_path, site_path / "public", site_path / "public" / "index.html"):
        st = path.stat()
        assert st.st_gid == gid, path
        assert (st.st_mode & 0o777) == (0o750 if path.is_dir() else 0o640), path
    answers(nginx, "group.example", "Welcome")  # nginx's workers run as nobody:nogroup


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_bad_provision_settings_are_one_clear_error(lab: Lab) -> None:
    write_config(lab.home, {"provision": {"require_disable_before_delete": "yes"}})
    res = lab.run("task", "add", "verify", "@srv")
    assert res.code == 2 and "require_disable_before_delete must be true or false" in res.err
    write_config(lab.home, {"provision": {"keep_everything": True}})
    res = lab.run("task", "add", "verify", "@srv")
    assert res.code == 2 and "[provision]: unknown key(s) keep_everything" in res.err


def test_delete_without_disabling_first_when_configured(lab: Lab, nginx) -> None:
    write_config(lab.home, {"provision": {"require_disable_before_delete": False}})
    site = lab.site("@quick.example")
    lab.must("install", site)
    answers(nginx, "quick.example", "Welcome")
    lab.must("delete", site)
    gone(nginx, "quick.example")


def test_clone_gives_a_second_site_with_its_own_database(lab: Lab, nginx) -> None:
    site = lab.site("@orig.example", "@plat", "--aliases", "www.orig.example",
                    "--language", "fr")
    lab.must("install", site)
    result = lab.must("clone", site, new_uri="copy.example", new_name="copy")["result"]
    assert result["clone"] == "@copy"
    answers(nginx, "orig.example", "Welcome to orig.example")
    answers(nginx, "copy.example", "Welcome to orig.example")  # the same files
    copy = json.loads(lab.ok("context", "show", "@copy", "--json").out)["fields"]
    assert (copy["uri"], copy["aliases"], copy["language"]) == ("copy.example", [], "fr")
    orig_db = secrets_of(lab.home, site)["db"]["path"]
    copy_db = secrets_of(lab.home, "@copy")["db"]["path"]
    assert orig_db != copy_db
    assert sqlite_rows(copy_db) == sqlite_rows(orig_db)
    import sqlite3

    with sqlite3.connect(copy_db) as db:
        db.execute("INSERT INTO notes (body) VALUES ('only in the copy')")
    assert len(sqlite_rows(copy_db)) == 3 and len(sqlite_rows(orig_db)) == 2
    (lab.www / "plat/sites/copy.example/public/index.html").write_text("the copy\n")
    answers(nginx, "copy.example", "the copy")
    answers(nginx, "orig.example", "Welcome to orig.example")
    refused = lab.task("clone", site, new_uri="copy.example", new_name="copy")
    assert refused["status"] == "error" and "exists already" in refused["result"]["error"]


def test_migrate_to_another_platform_and_uri(lab: Lab, nginx) -> None:
    site = lab.site("@move.example")
    lab.must("install", site)
    old_db = secrets_of(lab.home, site)["db"]["path"]
    lab.platform("@next")
    result = lab.must("migrate", site, platform="@next", new_uri="moved.example")["result"]
    assert result["platform"] == "@next" and result["uri"] == "moved.example"
    new_path = lab.www / "next" / "sites" / "moved.example"
    assert result["site_path"] == str(new_path)
    answers(nginx, "moved.example", "Welcome to move.example")
    gone(nginx, "move.example")
    assert not (lab.www / "plat" / "sites" / "move.example").exists()
    # served from the new platform's folder
    (new_path / "public" / "index.html").write_text("from the next platform\n")
    answers(nginx, "moved.example", "from the next platform")
    fields = json.loads(lab.ok("context", "show", site, "--json").out)["fields"]
    assert (fields["platform"], fields["uri"]) == ("@next", "moved.example")
    # same database server: the database stayed, with its rows
    assert secrets_of(lab.home, site)["db"]["path"] == old_db
    assert len(sqlite_rows(old_db)) == 2
    lab.must("verify", site)
    nothing = lab.task("migrate", site, platform="@next")
    assert nothing["status"] == "error" and "needs another" in nothing["result"]["error"]


def test_migrate_to_another_database_server(lab: Lab, nginx) -> None:
    site = lab.site("@dbmove.example")
    lab.must("install", site)
    old_db = Path(secrets_of(lab.home, site)["db"]["path"])
    lab.server("@db2")
    lab.must("migrate", site, db_server="@db2")
    new_db = Path(secrets_of(lab.home, site)["db"]["path"])
    assert new_db.parent == lab.home / "databases" / "db2"
    assert sqlite_rows(new_db) == [(1, "first note"), (2, "second note")]
    assert not old_db.exists()
    assert json.loads(lab.ok("context", "show", site, "--json").out)["fields"][
        "db_server"] == "@db2"
    answers(nginx, "dbmove.example", "Welcome to dbmove.example")


def test_backup_then_changes_then_restore_gives_back_files_and_rows(lab: Lab, nginx):
    site = lab.site("@keep.example")
    lab.must("install", site)
    site_path = lab.www / "plat" / "sites" / "keep.example"
    (site_path / "files").mkdir()
    (site_path / "files" / "photo.bin").write_bytes(os.urandom(300_000))
    (site_path / "files" / "empty").mkdir()
    db_file = secrets_of(lab.home, site)["db"]["path"]
    files_before = tree(site_path)
    rows_before = sqlite_rows(db_file)
    made = lab.must("backup", site)["result"]["file"]

    (site_path / "files" / "photo.bin").write_bytes(b"overwritten")
    (site_path / "files" / "new.txt").write_text("added after the backup\n")
    (site_path / "public" / "index.html").unlink()
    import sqlite3

    with sqlite3.connect(db_file) as db:
        db.execute("DELETE FROM notes WHERE id = 1")
        db.execute("INSERT INTO notes (body) VALUES ('after the backup')")
    answers_now = tree(site_path)

    result = lab.must("restore", site, file=Path(made).name)["result"]
    assert tree(site_path) == files_before
    assert sqlite_rows(db_file) == rows_before
    # the state it replaced was backed up first
    pre = Path(result["pre_restore_backup"])
    with open_tar(pre) as tar:
        assert "files/files/new.txt" in tar.getnames()
    lab.must("restore", site, file=pre.name)
    assert tree(site_path) == answers_now
    assert sqlite_rows(db_file)[-1] == (3, "after the backup")

    lab.must("clone", site, new_uri="other.example")
    theirs = lab.must("backup", "@other.example")["result"]["file"]
    doc = lab.task("restore", site, file=Path(theirs).name)
    assert doc["status"] == "error" and "is a backup of @other.example" in doc["result"]["error"]
    for bad, message in ((str(lab.home / "contexts" / "keep.example.toml"), "must be a backup"),
                         ("../contexts/keep.example.toml", "must be a backup"),
                         ("nothing.tar.gz", "no backup")):
        doc = lab.task("restore", site, file=bad)
        assert doc["status"] == "error" and message in doc["result"]["error"], doc


def test_backup_retention_and_names(lab: Lab, nginx) -> None:
    write_config(lab.home, {"provision": {"backup_keep": 2, "backup_keep_days": 10}})
    site = lab.site("@many.example")
    lab.must("install", site)
    made = [Path(lab.must("backup", site)["result"]["file"]) for _ in range(3)]
    assert len(set(made)) == 3
    for path in made:
        assert path.parent == lab.home / "backups"
        assert path.name.startswith("many.example-") and path.name.endswith(".tar.zst")
    left = sorted(p.name for p in (lab.home / "backups").iterdir())
    assert left == sorted(p.name for p in made[1:])  # at most 2: the oldest went
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in made[1:])
    old = 20 * 86400
    os.utime(made[1], (made[1].stat().st_atime - old, made[1].stat().st_mtime - old))
    last = lab.must("backup", site)["result"]
    assert last["removed_backups"] == [str(made[1])]
    # another site's backups (even with a similar name) are never touched
    other = lab.home / "backups" / "many.example.org-20200101.000000.tar.gz"
    other.write_bytes(b"x")
    lab.must("backup", site)
    assert other.exists()


def test_a_web_root_outside_the_platform_root_is_refused(lab: Lab, nginx) -> None:
    root = make_platform(lab.www / "escape", web_root="{root}/../../../etc")
    lab.save("@escape", "--context_type", "platform", "--root", str(root),
             "--web_server", "@srv")
    site = lab.site("@out.example", "@escape")
    doc = lab.task("install", site)
    assert doc["status"] == "error", doc
    assert "is not inside the platform root" in doc["result"]["error"]
    assert not (root / "sites" / "out.example").exists()  # rolled back
    assert not list((lab.home / "secrets").glob("out.example*"))


def test_retention_never_removes_the_last_backup_of_a_deleted_site(lab: Lab, nginx) -> None:
    """A site deleted, then a new one at the same uri: the new one's retention leaves the
    backup that the delete made."""
    write_config(lab.home, {"provision": {"backup_keep": 1}})
    site = lab.site("@again.example")
    lab.must("install", site)
    lab.must("disable", site)
    final = Path(lab.must("delete", site)["result"]["backup_file"])
    assert final.exists()
    lab.site("@again.example")
    lab.must("install", site)
    made = [Path(lab.must("backup", site)["result"]["file"]) for _ in range(2)]
    assert final.exists()  # the deleted installation's last backup stays
    assert not made[0].exists() and made[1].exists()  # this one's own are kept to 1


def test_backup_names_take_a_suffix_when_taken(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from hostctl.provision.backup import _link_free_name

    for _ in range(5):
        stamp = datetime.now(UTC).strftime("%Y%m%d.%H%M%S")
        (tmp_path / f"a.example-{stamp}.tar.gz").write_bytes(b"first")
        (tmp_path / f"a.example-{stamp}_2.tar.gz").write_bytes(b"second")
        tmp = tmp_path / "tmp"
        tmp.write_bytes(b"third")
        got = _link_free_name(tmp, tmp_path, "a.example")
        if stamp in got.name:
            # one name is one backup, whatever its compression: an older .tar.gz counts
            assert got.name == f"a.example-{stamp}_3.tar.zst"
            assert got.read_bytes() == b"third"
            assert (tmp_path / f"a.example-{stamp}.tar.gz").read_bytes() == b"first"
            return
    raise AssertionError("the clock moved on every time")


def test_cron_queue_runs_the_builtin_cron_and_config_may_replace_it(lab: Lab, nginx):
    lab.site("@c1.example")
    lab.site("@c2.example")  # saved, never installed: the queue gives it no cron
    lab.must("install", "@c1.example")
    for _ in range(2):  # one site a run (Aegir's batch queue: at least 6 runs an hour)
        lab.ok("dispatch", "--queue", "cron", "--force")
    lab.ok("wait-queue", "--once")
    res = json.loads(lab.ok("task", "list", "--json").out)
    crons = {t["context"]: t for t in res if t["type"] == "cron"}
    assert set(crons) == {"@c1.example"}
    assert crons["@c1.example"]["status"] == "success"
    assert crons["@c1.example"]["result"]["ran"] is True
    doc = lab.task("cron", "@c2.example")  # asked for by hand: nothing to do
    assert doc["status"] == "success" and doc["result"]["ran"] is False
    log = (lab.www / "plat/sites/c1.example/cron.log").read_text()
    assert log == "cron ran for c1.example\n"

    write_config(lab.home, {"tasks": {"cron": {"command": ["true"],
                                                "context_types": ["site"]}}})
    from hostctl.config import load as load_config
    from hostctl.contexts.schema import field_names
    from hostctl.provision.registry import load

    registry = load(load_config(lab.home / "config.toml", field_names()), plugins=False)
    assert registry.get("cron").source == "config"
    write_config(lab.home, {"tasks": {"install": {"command": ["true"]}}})
    res = lab.run("task", "add", "install", "@c2.example")
    assert res.code == 2 and "redefines a built-in task type" in res.err


def test_login_reset_needs_an_enabled_site_and_a_command(lab: Lab, nginx) -> None:
    site = lab.site("@login.example")
    lab.must("install", site)
    lab.must("disable", site)
    doc = lab.task("login-reset", site)
    assert doc["status"] == "error" and "is disabled" in doc["result"]["error"]
    lab.platform("@bare", commands=("install",))
    lab.site("@bare.example", "@bare")
    lab.must("install", "@bare.example")
    doc = lab.task("login-reset", "@bare.example")
    assert doc["status"] == "error" and "no login_link command" in doc["result"]["error"]
    lab.must("cron", "@bare.example")  # no cron command: nothing to do


def test_tasks_refused_on_a_site_that_is_not_installed(lab: Lab, nginx) -> None:
    site = lab.site("@never.example")
    for ttype, options in (("backup", {}), ("restore", {}), ("clone", {"new_uri": "x.example"}),
                           ("migrate", {"new_uri": "y.example"}), ("login-reset", {})):
        doc = lab.task(ttype, site, **options)
        assert doc["status"] == "error", (ttype, doc)
        assert "is not installed" in doc["result"]["error"], (ttype, doc)
    verify = lab.must("verify", site)["result"]
    assert verify["installed"] is False
    assert not (lab.www / "plat" / "sites").exists()  # verify made no folder
    lab.must("disable", site)
    lab.must("delete", site)
    assert not lab.context_file(site).exists()


def test_platform_delete_refused_while_it_has_sites_unless_forced(lab: Lab, nginx) -> None:
    root = lab.platform("@old")
    lab.site("@p1.example", "@old")
    lab.site("@p2.example", "@old", "--protected", "yes")
    lab.must("install", "@p1.example")
    doc = lab.task("delete", "@old", force="yes")
    assert doc["status"] == "error" and "has protected sites: @p2.example" in doc[
        "result"]["error"]
    lab.save("@p2.example", "--protected", "no")
    doc = lab.task("delete", "@old")
    assert doc["status"] == "error"
    assert "has sites: @p1.example, @p2.example" in doc["result"]["error"]
    result = lab.must("delete", "@old", force="yes")["result"]
    assert result["sites"] == ["@p1.example", "@p2.example"]
    [made] = result["backups"]
    assert Path(made).name.startswith("p1.example-")
    assert not root.exists()
    for name in ("@old", "@p1.example", "@p2.example"):
        assert not lab.context_file(name).exists()
    gone(nginx, "p1.example")
    res = lab.run("provision-delete", "@p1.example")
    assert res.code == 2 and "no context @p1.example" in res.err


def test_platform_delete_never_removes_another_platform_or_a_system_folder(lab: Lab) -> None:
    outer = lab.platform("@outer")
    inner = outer / "nested"
    inner.mkdir()
    lab.save("@inner", "--context_type", "platform", "--root", str(inner),
             "--web_server", "@srv")
    for victim, other in (("@outer", "@inner"), ("@inner", "@outer")):
        doc = lab.task("delete", victim)
        assert doc["status"] == "error", doc
        assert f"platform {other} lives in" in doc["result"]["error"]
    assert inner.is_dir() and lab.context_file("@outer").exists()
    lab.save("@etc", "--context_type", "platform", "--root", "/etc", "--web_server", "@srv")
    doc = lab.task("delete", "@etc")
    assert doc["status"] == "error" and "system folder" in doc["result"]["error"]
    assert Path("/etc/passwd").exists() and lab.context_file("@etc").exists()


@pytest.mark.parametrize("mode", ["foreground", "queue"])
def test_server_and_platform_tasks_in_the_foreground_and_through_the_queue(lab: Lab, mode):
    assert lab.must("verify", "@srv", mode)["result"]["failed_checks"] == 0
    root = lab.platform("@spare")
    assert lab.must("verify", "@spare", mode)["result"]["root"] == str(root)
    assert lab.must("lock", "@spare", mode)["result"]["locked"] is True
    assert json.loads(lab.ok("context", "show", "@spare", "--json").out)["fields"]["locked"]
    assert lab.must("unlock", "@spare", mode)["result"]["locked"] is False
    assert lab.must("delete", "@spare", mode)["result"]["deleted"] == "@spare"
    assert not root.exists() and not lab.context_file("@spare").exists()


def test_tasks_that_make_or_remove_things_never_simply_run_again() -> None:
    from hostctl.config import Config
    from hostctl.provision.registry import load
    from hostctl.queues.model import Envelope
    from hostctl.runners.home import retry_policy

    registry = load(Config(), plugins=False)
    for name in registry.names():
        env = Envelope(id="0" * 20, type=name, context="@x", options={},
                       context_options={}, priority=5, created="2026-01-01T00:00:00Z")
        again = retry_policy(registry)(env).rerun_on_loss
        unsafe = name in ("install", "clone", "migrate", "delete", "restore")
        assert again is not unsafe, name
