"""WordPress end to end: Debian's wordpress package made into a platform
(examples/wordpress), sites on a real nginx, php-fpm (each site its own user) and MariaDB,
through the queue. WordPress's own installation is completed through its install form
over HTTP, as a person would; a post is added through its REST API after logging in; a
backup and a restore take it away again; clone, migrate, disable, enable and delete; the
second site's PHP reads neither the first's settings nor its uploads."""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import pwd
import re
import socket
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from acmehelpers import Pebble, start_pebble
from provisionhelpers import (
    Lab,
    MariadbServer,
    NginxServer,
    PhpFpm,
    free_port,
    remove_site_users,
    secrets_of,
    site_users,
    start_mariadb,
    start_nginx,
    start_php_fpm,
    world_readable_dir,
)

from hostctl.provision import privileged

WORDPRESS = Path("/usr/share/wordpress")
MAKE_PLATFORM = Path(__file__).parent.parent / "examples" / "wordpress" / "make-platform.sh"

pytestmark = pytest.mark.skipif(not (WORDPRESS / "wp-settings.php").exists(),
                                reason="Debian's wordpress package is not installed")


@pytest.fixture(scope="module")
def www() -> Path:
    return world_readable_dir("hostctl-wp-www-")


@pytest.fixture(scope="module")
def fpm(www: Path) -> Iterator[PhpFpm]:
    server = start_php_fpm([www], prefix="hwp")
    prefix = privileged.load(server.settings).user_prefix
    yield server
    server.stop()
    remove_site_users(prefix)


@pytest.fixture(scope="module")
def my() -> Iterator[MariadbServer]:
    server = start_mariadb()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def web() -> Iterator[NginxServer]:
    server = start_nginx(world_readable_dir("hostctl-wp-nginx-"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pebble(web: NginxServer) -> Iterator[Pebble]:
    server = start_pebble(web.port)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ssl_port() -> int:
    return free_port()


@pytest.fixture
def lab(run_hostctl, home: Path, www: Path, web: NginxServer, fpm: PhpFpm,
        my: MariadbServer, pebble: Pebble, ssl_port: int) -> Iterator[Lab]:
    lab = Lab(run_hostctl, home, www, web, name="wp")
    lab.server("@srv", *fpm.server_fields(), *my.server_fields()[2:], "--http_ssl_port",
               str(ssl_port), "--ssl_acme_directory", pebble.directory, "--ssl_ca_bundle",
               str(pebble.ca_bundle), db="mariadb")
    yield lab
    lab.close()


def make_platform(lab: Lab, name: str) -> Path:
    root = lab.www / name.lstrip("@")
    subprocess.run(["sh", str(MAKE_PLATFORM), str(root)], check=True, capture_output=True,
                   timeout=300)
    lab.save(name, "--context_type", "platform", "--root", str(root), "--web_server", "@srv")
    return root


class Browser:
    """A person's browser on one site: cookies kept, redirects not followed, every request
    to the test nginx with the site's host name; over HTTPS (``cafile``: the root to
    verify the site's certificate with, for its name) or HTTP."""

    def __init__(self, web: NginxServer, host: str, *, https_port: int = 0,
                 cafile: Path | None = None) -> None:
        self.web, self.host = web, host
        self.https_port, self.cafile = https_port, cafile
        self.jar = http.cookiejar.CookieJar()

    def connect(self) -> http.client.HTTPConnection:
        if not self.https_port:
            return http.client.HTTPConnection("127.0.0.1", self.web.port, timeout=60)
        context = ssl.create_default_context(cafile=str(self.cafile))
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=60)
        conn = http.client.HTTPConnection(self.host, self.https_port, timeout=60)
        conn.sock = context.wrap_socket(raw, server_hostname=self.host)
        return conn

    def request(self, path: str, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, str, dict[str, str]]:
        scheme = "https" if self.https_port else "http"
        payload = body if body is not None else (
            urllib.parse.urlencode(data).encode() if data is not None else None)
        req = urllib.request.Request(f"{scheme}://{self.host}{path}", data=payload,
                                     headers=headers or {})
        self.jar.add_cookie_header(req)
        conn = self.connect()
        try:
            hdrs = dict(req.header_items())
            hdrs["Host"] = self.host
            if payload is not None and "Content-type" not in hdrs:
                hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request("POST" if payload is not None else "GET", path, body=payload,
                         headers=hdrs)
            res = conn.getresponse()
            text = res.read().decode("utf-8", "replace")

            class _Resp:  # what CookieJar.extract_cookies reads
                def info(self) -> Any:
                    return res.msg

            self.jar.extract_cookies(_Resp(), req)  # type: ignore[arg-type]
            return res.status, text, {k.lower(): v for k, v in res.getheaders()}
        finally:
            conn.close()


def install_wordpress(web: NginxServer, host: str, title: str, **https: Any) -> Browser:
    """WordPress's install form, filled in as a person would; then log in."""
    browser = Browser(web, host, **https)
    scheme = "https" if browser.https_port else "http"
    status, page, _ = browser.request("/wp-admin/install.php")
    assert status == 200 and 'name="weblog_title"' in page, (status, page[:2000])
    status, page, _ = browser.request("/wp-admin/install.php?step=2", {
        "weblog_title": title, "user_name": "admin", "admin_password": "Adm1n-pass-word!",
        "admin_password2": "Adm1n-pass-word!", "pw_weak": "1",
        "admin_email": "admin@example.com", "blog_public": "0",
        "Submit": "Install WordPress"})
    assert status == 200 and "Success!" in page, (status, page[:3000])
    browser.request("/wp-login.php")  # its test cookie
    status, page, headers = browser.request("/wp-login.php", {
        "log": "admin", "pwd": "Adm1n-pass-word!", "wp-submit": "Log In",
        "redirect_to": f"{scheme}://{host}/wp-admin/", "testcookie": "1"})
    assert status == 302 and "/wp-admin/" in headers.get("location", ""), (status, page)
    return browser


def add_post(browser: Browser, title: str) -> None:
    status, nonce, _ = browser.request("/wp-admin/admin-ajax.php?action=rest-nonce")
    assert status == 200 and re.fullmatch(r"[0-9a-f]{10}", nonce), (status, nonce)
    status, body, _ = browser.request(
        "/?rest_route=/wp/v2/posts", headers={"X-WP-Nonce": nonce,
                                              "Content-Type": "application/json"},
        body=json.dumps({"title": title, "content": "Written by the test.",
                         "status": "publish"}).encode())
    assert status == 201, (status, body[:2000])


def upload(browser: Browser, name: str, data: bytes) -> str:
    """A file uploaded through WordPress's media API; its URL path."""
    status, nonce, _ = browser.request("/wp-admin/admin-ajax.php?action=rest-nonce")
    assert status == 200, (status, nonce)
    status, body, _ = browser.request(
        "/?rest_route=/wp/v2/media", body=data,
        headers={"X-WP-Nonce": nonce, "Content-Type": "text/plain",
                 "Content-Disposition": f'attachment; filename="{name}"'})
    assert status == 201, (status, body[:2000])
    return urllib.parse.urlparse(json.loads(body)["source_url"]).path


def front_page(web: NginxServer, host: str, **https: Any) -> str:
    status, body, _ = Browser(web, host, **https).request("/")
    assert status == 200, (status, body[:2000])
    return body


def test_wordpress_through_its_whole_life(lab: Lab, web: NginxServer, fpm: PhpFpm,
                                          my: MariadbServer, pebble: Pebble,
                                          ssl_port: int) -> None:
    root = make_platform(lab, "@wp")
    lab.site("@blog.test", "@wp", "--aliases", "www.blog.test", "--redirection", "yes",
             "--ssl_enabled", "yes")
    doc = lab.must("install", "@blog.test", "queue")
    assert doc["result"]["certificate_source"] == "acme", doc
    tls = {"https_port": ssl_port, "cafile": pebble.root_file()}
    # HTTP sends to HTTPS, the alias to the uri; before WordPress's own installation, it
    # sends a visitor to its install form
    status, _, headers = web.get("www.blog.test", "/?p=1")
    assert (status, headers["Location"]) == (301, "https://blog.test/?p=1")
    assert Browser(web, "www.blog.test", **tls).request("/")[2]["location"] == \
        "https://blog.test/"
    status, _, got = Browser(web, "blog.test", **tls).request("/")
    assert status == 302 and "wp-admin/install.php" in got["location"], got
    browser = install_wordpress(web, "blog.test", "A hostctl blog", **tls)
    # its front page over HTTPS, with the certificate pebble issued for it
    status, page, _ = Browser(web, "blog.test", **tls).request("/")
    assert status == 200 and "A hostctl blog" in page
    assert 'href="https://blog.test/' in page

    # an upload lands in the site's own folder, its user's
    user = secrets_of(lab.home, "@blog.test")["unix_user"]
    uploads = root / "sites" / "blog.test" / "files"
    assert pwd.getpwuid(uploads.stat().st_uid).pw_name == user

    url = upload(browser, "photo.txt", b"an upload\n")
    assert Browser(web, "blog.test", **tls).request(url)[:2] == (200, "an upload\n")
    backup = lab.must("backup", "@blog.test", "queue")["result"]["backup_file"]
    add_post(browser, "Posted after the backup")
    assert "Posted after the backup" in front_page(web, "blog.test", **tls)
    lab.must("restore", "@blog.test", "queue", file=Path(backup).name)
    page = front_page(web, "blog.test", **tls)
    assert "A hostctl blog" in page and "Posted after the backup" not in page
    restored = root / url.lstrip("/")
    assert pwd.getpwuid(restored.stat().st_uid).pw_name == user
    assert Browser(web, "blog.test", **tls).request(url)[:2] == (200, "an upload\n")

    # a clone: its own database, user and settings; both sites answer
    lab.must("clone", "@blog.test", "queue", new_uri="copy.test")
    assert "A hostctl blog" in front_page(web, "copy.test")
    copy_user = secrets_of(lab.home, "@copy.test")["unix_user"]
    assert copy_user != user
    assert secrets_of(lab.home, "@copy.test")["db"]["name"] != \
        secrets_of(lab.home, "@blog.test")["db"]["name"]

    # migrate to a second platform made from the same package
    root2 = make_platform(lab, "@wp2")
    lab.must("migrate", "@blog.test", "queue", platform="@wp2")
    assert "A hostctl blog" in front_page(web, "blog.test", **tls)
    assert not (root / "sites" / "blog.test").exists()
    assert (root2 / "sites" / "blog.test" / "settings.php").exists()
    assert Browser(web, "blog.test", **tls).request(url)[:2] == (200, "an upload\n")

    lab.must("disable", "@blog.test", "queue")
    assert Browser(web, "blog.test", **tls).request("/")[0] == 503
    lab.must("enable", "@blog.test", "queue")
    assert "A hostctl blog" in front_page(web, "blog.test", **tls)

    for name in ("@blog.test", "@copy.test"):
        lab.must("disable", name, "queue")
        lab.must("delete", name, "queue")
    assert not set(site_users(privileged.load(fpm.settings).user_prefix)) & {user, copy_user}
    assert not any(d.startswith(("blogtest", "copytest")) for d in my.databases())
    assert os.listdir(fpm.pool_dir) == [".hostctl.lock"] or not list(
        fpm.pool_dir.glob("hostctl-*.conf"))


def test_the_second_site_reads_neither_the_first_sites_settings_nor_uploads(
        lab: Lab, web: NginxServer, www: Path) -> None:
    root = make_platform(lab, "@wpx")
    # a plugin-free probe: a PHP file in the platform (as a hacked site could place
    # one in its own uploads, were PHP run there) that reads the path it is given
    (root / "probe.php").write_text(
        "<?php $d = @file_get_contents($_GET['f']);"
        " echo $d === false ? 'DENIED' : 'READ'; ")
    (root / "probe.php").chmod(0o644)
    for name in ("@one.test", "@two.test"):
        lab.site(name, "@wpx")
        lab.must("install", name, "queue")
    site_one = root / "sites" / "one.test"

    def probe(host: str, path: Path) -> str:
        status, body, _ = web.get(host, "/probe.php?" + urllib.parse.urlencode(
            {"f": str(path)}))
        assert status == 200, (status, body)
        return body

    # one's PHP wrote an upload (through WordPress's media API), and reads its settings
    browser = install_wordpress(web, "one.test", "Site one")
    url = upload(browser, "secret.txt", b"private to site one\n")
    uploaded = root / url.lstrip("/")
    assert uploaded.is_relative_to(site_one / "files") and uploaded.is_file(), url
    # nginx serves it, as WordPress links it
    assert web.get("one.test", url)[:2] == (200, "private to site one\n")
    assert pwd.getpwuid(uploaded.stat().st_uid).pw_name == \
        secrets_of(lab.home, "@one.test")["unix_user"]
    assert probe("one.test", site_one / "settings.php") == "READ"
    assert probe("one.test", uploaded) == "READ"
    assert probe("two.test", site_one / "settings.php") == "DENIED"
    assert probe("two.test", uploaded) == "DENIED"
    assert probe("two.test", root / "sites" / "two.test" / "settings.php") == "READ"
    for name in ("@one.test", "@two.test"):
        lab.must("disable", name)
        lab.must("delete", name)
