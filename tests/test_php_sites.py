"""PHP sites on a real nginx, a real php-fpm (its master as root) and a real PostgreSQL,
through the queue: each site's PHP runs as its own UNIX user, which the privileged
helper makes; one site's PHP can read neither another's settings nor its uploads; the
whole lifecycle (install, cron, backup, restore, clone, migrate, disable, enable, delete)
keeps that true and leaves no user, pool or socket behind."""

from __future__ import annotations

import json
import pwd
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import (
    Lab,
    NginxServer,
    PgCluster,
    PhpFpm,
    make_php_platform,
    remove_site_users,
    secrets_of,
    site_users,
    start_nginx,
    start_php_fpm,
    start_postgres,
    world_readable_dir,
)

from hostctl.provision import privileged


@pytest.fixture(scope="module")
def www() -> Path:
    return world_readable_dir("hostctl-php-www-")


@pytest.fixture(scope="module")
def fpm(www: Path) -> Iterator[PhpFpm]:
    server = start_php_fpm([www])
    prefix = privileged.load(server.settings).user_prefix
    yield server
    server.stop()
    remove_site_users(prefix)


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = start_postgres()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def web() -> Iterator[NginxServer]:
    server = start_nginx(world_readable_dir("hostctl-php-nginx-"))
    yield server
    server.stop()


@pytest.fixture
def lab(run_hostctl, home: Path, www: Path, web: NginxServer, fpm: PhpFpm,
        pg: PgCluster, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(run_hostctl, home, www, web, name=request.node.name[:40])
    lab.server("@srv", *fpm.server_fields(), *pg.server_fields()[2:], db="pgsql")
    yield lab
    lab.close()


def get(web: NginxServer, host: str, path: str, **query: str) -> tuple[int, str]:
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    status, body, _ = web.get(host, url)
    return status, body


def prefix_of(fpm: PhpFpm) -> str:
    return privileged.load(fpm.settings).user_prefix


def test_each_site_runs_as_its_own_user_and_cannot_read_another(
        lab: Lab, web: NginxServer, fpm: PhpFpm, www: Path, pg: PgCluster) -> None:
    root = make_php_platform(www / "drupalish")
    lab.save("@drupalish", "--context_type", "platform", "--root", str(root),
             "--web_server", "@srv")
    for name in ("@a.test", "@b.test"):
        lab.site(name, "@drupalish")
        lab.must("install", name, "queue")
    user_a = secrets_of(lab.home, "@a.test")["unix_user"]
    user_b = secrets_of(lab.home, "@b.test")["unix_user"]
    assert user_a != user_b and {user_a, user_b} <= set(site_users(prefix_of(fpm)))

    # PHP answers through the front controller, as the site's own user
    assert get(web, "a.test", "/") == (200, "site a.test salt 32 notes: installed\n")
    assert get(web, "a.test", "/any/path/at/all")[0] == 200
    assert get(web, "a.test", "/whoami") == (200, f"{user_a}\n")
    assert get(web, "b.test", "/whoami") == (200, f"{user_b}\n")

    site_a = root / "sites" / "a.test"
    settings_a = site_a / "settings.php"
    st = settings_a.stat()
    assert (pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)) == (user_a, 0o400)
    top = site_a.stat()
    assert stat.S_IMODE(top.st_mode) == 0o750 and top.st_gid == pwd.getpwnam(user_a).pw_gid
    assert "DB_PASSWD" in settings_a.read_text()  # as root: what the site's PHP reads

    # its PHP writes its files folder (as its user), and nothing else of the site
    assert get(web, "a.test", "/upload", name="photo.txt", text="a's upload") == \
        (200, "WRITTEN\n")
    upload = site_a / "files" / "photo.txt"
    assert pwd.getpwuid(upload.stat().st_uid).pw_name == user_a
    assert get(web, "a.test", "/upload", name="../x.txt", text="no")[1] == "WRITTEN\n"
    assert not (site_a / "x.txt").exists()  # basename(): still in files/

    # the proof: b's PHP can read its own settings, not a's settings or uploads
    own = get(web, "b.test", "/read", file=str(root / "sites/b.test/settings.php"))
    assert own[1].startswith("READ:<?php")
    assert get(web, "b.test", "/read", file=str(settings_a)) == (200, "DENIED\n")
    assert get(web, "b.test", "/read", file=str(upload)) == (200, "DENIED\n")
    assert get(web, "a.test", "/read", file=str(upload)) == (200, "READ:a's upload")
    # nor b's pool's socket: only the web server's user may connect to a pool
    sock = fpm.socket_dir / f"{user_a}.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    assert pwd.getpwuid(sock.stat().st_uid).pw_name == "nobody"

    # what is never served: the settings, denied names, dot files, PHP in files/
    assert get(web, "a.test", "/install.php")[0] == 403
    assert get(web, "a.test", "/.hostctl-app.toml")[0] in (403, 404)
    lab.must("verify", "@a.test")
    (site_a / "files").chmod(0o755)
    assert get(web, "a.test", "/upload", name="evil.php", text="<?php echo 'ran';")[1] \
        == "WRITTEN\n"
    assert get(web, "a.test", "/sites/a.test/files/evil.php")[0] == 403
    assert get(web, "a.test", "/sites/a.test/files/photo.txt") == (200, "a's upload")

    # the periodic cron queue runs the application's cron script (one site a pass)
    for _ in range(2):
        lab.ok("dispatch", "--queue", "cron", "--force")
    lab.ok("wait-queue", "--once")
    crons = [t for t in json.loads(lab.ok("task", "list", "--json").out)
             if t["type"] == "cron"]
    assert {t["context"] for t in crons} == {"@a.test", "@b.test"}, crons
    assert all(t["status"] == "success" and t["result"]["ran"] for t in crons), crons
    assert get(web, "b.test", "/")[1].endswith("notes: installed | cron ran\n")
    assert get(web, "a.test", "/")[1].endswith("notes: installed | cron ran\n")

    # backup, a change, restore: the change is gone, the rest (and its owners) back
    backup = lab.must("backup", "@a.test", "queue")["result"]["backup_file"]
    assert get(web, "a.test", "/add", body="after the backup") == (200, "ADDED\n")
    (site_a / "files" / "photo.txt").unlink()
    lab.must("restore", "@a.test", "queue", file=Path(backup).name)
    assert get(web, "a.test", "/") == (200, "site a.test salt 32 notes: installed | "
                                       "cron ran\n")
    assert get(web, "a.test", "/read", file=str(upload)) == (200, "READ:a's upload")
    assert pwd.getpwuid(upload.stat().st_uid).pw_name == user_a
    assert get(web, "b.test", "/read", file=str(upload)) == (200, "DENIED\n")

    # clone: its own user, database and settings
    lab.must("clone", "@a.test", "queue", new_uri="c.test")
    user_c = secrets_of(lab.home, "@c.test")["unix_user"]
    assert user_c not in (user_a, user_b)
    assert get(web, "c.test", "/whoami") == (200, f"{user_c}\n")
    assert get(web, "c.test", "/add", body="only in c")[1] == "ADDED\n"
    assert "only in c" not in get(web, "a.test", "/")[1]
    assert get(web, "c.test", "/read", file=str(settings_a)) == (200, "DENIED\n")
    assert secrets_of(lab.home, "@c.test")["db"]["name"] != \
        secrets_of(lab.home, "@a.test")["db"]["name"]

    # migrate to a second platform made from the same application
    root2 = make_php_platform(www / "drupalish2")
    lab.save("@drupalish2", "--context_type", "platform", "--root", str(root2),
             "--web_server", "@srv")
    lab.must("migrate", "@a.test", "queue", platform="@drupalish2")
    assert not site_a.exists()
    assert get(web, "a.test", "/whoami") == (200, f"{user_a}\n")
    assert get(web, "a.test", "/")[1] == "site a.test salt 32 notes: installed | cron ran\n"
    moved = root2 / "sites" / "a.test"
    assert get(web, "a.test", "/read", file=str(moved / "files/photo.txt")) == \
        (200, "READ:a's upload")
    assert get(web, "b.test", "/read", file=str(moved / "settings.php")) == \
        (200, "DENIED\n")

    # disable, enable, delete: nothing of a site is left
    lab.must("disable", "@a.test", "queue")
    assert get(web, "a.test", "/")[0] == 503
    lab.must("enable", "@a.test", "queue")
    assert get(web, "a.test", "/")[0] == 200
    for name in ("@a.test", "@b.test", "@c.test"):
        lab.must("disable", name, "queue")
        lab.must("delete", name, "queue")
    assert not set(site_users(prefix_of(fpm))) & {user_a, user_b, user_c}
    assert not list(fpm.pool_dir.glob("hostctl-*.conf"))
    assert not list(fpm.socket_dir.glob("*.sock"))
    assert not (root2 / "sites" / "a.test").exists()
    assert not (root / "sites" / "b.test").exists()


def test_basic_auth_and_redirection_and_aliases(lab: Lab, web: NginxServer, www: Path,
                                                fpm: PhpFpm) -> None:
    root = make_php_platform(www / "authed")
    lab.save("@authed", "--context_type", "platform", "--root", str(root),
             "--web_server", "@srv")
    lab.site("@locked.test", "@authed", "--aliases", "www.locked.test,old.test",
             "--redirection", "yes", "--http_basic_auth_username", "editor",
             "--http_basic_auth_password", "s3cret pass")
    doc = lab.must("install", "@locked.test", "queue")
    assert "s3cret pass" not in lab.log(doc["id"])
    assert get(web, "locked.test", "/")[0] == 401
    import base64
    import http.client

    def with_auth(user: str, password: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("GET", "/", headers={"Host": "locked.test",
                                          "Authorization": f"Basic {token}"})
        status = conn.getresponse().status
        conn.close()
        return status

    assert with_auth("editor", "s3cret pass") == 200
    assert with_auth("editor", "wrong") == 401
    status, _, headers = web.get("www.locked.test", "/some/page?x=1")
    assert (status, headers["Location"]) == (301, "http://locked.test/some/page?x=1")
    assert web.get("old.test", "/")[0] == 301
    # the hash is on disk, never the password
    auth = root / "sites" / "locked.test" / ".htpasswd"
    assert auth.read_text().startswith("editor:$6$") and "s3cret" not in auth.read_text()
    assert web.get("locked.test", "/sites/locked.test/.htpasswd")[0] in (401, 403)
    hashed = auth.read_text()
    lab.must("verify", "@locked.test")  # the same password: the same file
    assert auth.read_text() == hashed
    backup = lab.must("backup", "@locked.test")["result"]["file"]
    from hostctl.provision.backup import open_tar

    with open_tar(Path(backup)) as tar:
        assert not [n for n in tar.getnames() if n.endswith(".htpasswd")]
    # without redirection the aliases serve the site itself; without a user, no auth
    lab.save("@locked.test", "--redirection", "no", "--http_basic_auth_username", "null")
    lab.must("verify", "@locked.test", "queue")
    assert get(web, "old.test", "/whoami")[0] == 200
    assert get(web, "locked.test", "/")[0] == 200
    assert not auth.exists()
    lab.must("disable", "@locked.test")
    lab.must("delete", "@locked.test")


def test_a_php_platform_needs_a_server_that_runs_php(lab: Lab, www: Path) -> None:
    root = make_php_platform(www / "nophp")
    lab.save("@nophpsrv", "--context_type", "server", "--db_service_type", "none")
    lab.save("@nophp", "--context_type", "platform", "--root", str(root),
             "--web_server", "@nophpsrv")
    lab.site("@x.test", "@nophp")
    doc = lab.must("install", "@x.test", status="error")
    assert "runs no PHP (php_service_type php-fpm)" in json.dumps(doc["result"]), doc
    assert not (root / "sites" / "x.test").exists()


def test_a_php_site_on_sqlite_keeps_its_database_in_its_own_folder(
        lab: Lab, web: NginxServer, fpm: PhpFpm, www: Path) -> None:
    lab.server("@lite", *fpm.server_fields(), db="sqlite")
    root = make_php_platform(www / "lite1")
    lab.save("@lite1", "--context_type", "platform", "--root", str(root),
             "--web_server", "@lite")
    for name in ("@l1.test", "@l2.test"):
        lab.site(name, "@lite1")
        lab.must("install", name, "queue")
    user = secrets_of(lab.home, "@l1.test")["unix_user"]
    dbfile = Path(secrets_of(lab.home, "@l1.test")["db"]["path"])
    assert dbfile.parent == root / "sites" / "l1.test" / ".db"
    assert pwd.getpwuid(dbfile.parent.stat().st_uid).pw_name == user
    # its PHP writes its database; the other site's PHP cannot even read it
    assert get(web, "l1.test", "/add", body="by php") == (200, "ADDED\n")
    assert get(web, "l1.test", "/")[1].endswith("notes: installed | by php\n")
    assert get(web, "l2.test", "/read", file=str(dbfile)) == (200, "DENIED\n")
    assert get(web, "l1.test", "/.db/" + dbfile.name)[0] in (403, 404)

    backup = lab.must("backup", "@l1.test", "queue")["result"]["backup_file"]
    assert get(web, "l1.test", "/add", body="after the backup")[1] == "ADDED\n"
    lab.must("restore", "@l1.test", "queue", file=Path(backup).name)
    assert get(web, "l1.test", "/")[1].endswith("notes: installed | by php\n")
    assert get(web, "l1.test", "/add", body="after the restore")[1] == "ADDED\n"

    lab.must("clone", "@l1.test", "queue", new_uri="l3.test")
    assert get(web, "l3.test", "/")[1].endswith("installed | by php | after the restore\n")
    assert get(web, "l3.test", "/add", body="only in l3")[1] == "ADDED\n"
    assert "only in l3" not in get(web, "l1.test", "/")[1]

    root2 = make_php_platform(www / "lite2")
    lab.save("@lite2", "--context_type", "platform", "--root", str(root2),
             "--web_server", "@lite")
    lab.must("migrate", "@l1.test", "queue", platform="@lite2")
    moved = Path(secrets_of(lab.home, "@l1.test")["db"]["path"])
    assert moved.parent == root2 / "sites" / "l1.test" / ".db" and not dbfile.exists()
    assert get(web, "l1.test", "/add", body="after the migrate")[1] == "ADDED\n"
    assert get(web, "l1.test", "/")[1].endswith("after the restore | after the migrate\n")
    for name in ("@l1.test", "@l2.test", "@l3.test"):
        lab.must("disable", name, "queue")
        lab.must("delete", name, "queue")
    assert not (root2 / "sites" / "l1.test").exists()
    assert user not in site_users(prefix_of(fpm))


def test_an_operators_templates_take_the_place_of_the_built_in_ones(
        lab: Lab, web: NginxServer, fpm: PhpFpm, www: Path) -> None:
    from hostctl.provision.services.nginx import BUILTIN_TEMPLATE

    root = make_php_platform(www / "templated")
    lab.save("@templated", "--context_type", "platform", "--root", str(root),
             "--web_server", "@srv")
    templates = lab.home / "templates"
    templates.mkdir(parents=True)
    vhost_template = templates / "nginx-vhost.conf"
    pool_template = templates / "php-fpm-pool.conf"
    good_vhost = BUILTIN_TEMPLATE.replace(
        "    server_name {{ server_names }};\n",
        "    server_name {{ server_names }};\n    add_header X-Site {{ uri }} always;\n")
    vhost_template.write_text(good_vhost)
    pool_template.write_text("; every site's pool\nphp_admin_value[memory_limit] = 77M\n"
                             'env[SITE_ROOT] = "{root}"\n')
    lab.site("@t.test", "@templated")
    lab.must("install", "@t.test", "queue")
    status, body, headers = web.get("t.test", "/ini?name=memory_limit")
    assert (status, body, headers.get("X-Site")) == (200, "77M\n", "t.test")

    # what nginx or php-fpm (or the helper) refuses is never served: the task fails
    # saying why, and the site answers as before
    for vhost_text, pool_text, why in (
            (good_vhost.replace("    add_header", "    bogus_directive on;\n    add_header"),
             None, "nginx -t"),
            ("server {\n{{ listen }}\n    server_name {{ nothing }};\n}\n", None,
             "unknown placeholder {{ nothing }}"),
            (None, "user = root\n", "'user' is not a directive a site's pool may set"),
            (None, "pm = sometimes\n", "php-fpm -t")):
        if vhost_text is not None:
            vhost_template.write_text(vhost_text)
        if pool_text is not None:
            pool_template.write_text(pool_text)
        doc = lab.must("verify", "@t.test", status="error")
        assert why in json.dumps(doc["result"]), (why, doc)
        status, body, headers = web.get("t.test", "/ini?name=memory_limit")
        assert (status, body, headers.get("X-Site")) == (200, "77M\n", "t.test"), why
        vhost_template.write_text(good_vhost)
        pool_template.write_text("php_admin_value[memory_limit] = 77M\n")
    # without templates, the built-in ones again
    vhost_template.unlink()
    pool_template.unlink()
    lab.must("verify", "@t.test")
    status, body, headers = web.get("t.test", "/ini?name=memory_limit")
    assert status == 200 and body != "77M\n" and "X-Site" not in headers
    lab.must("disable", "@t.test")
    lab.must("delete", "@t.test")
