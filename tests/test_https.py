"""HTTPS from a real ACME CA: Debian's pebble on loopback, validating HTTP-01 through the
site's own nginx; certbot as the client. A site with ssl_enabled gets a certificate for
its uri and aliases, is served over HTTPS (verified against pebble's root) with a
redirect from HTTP, renews through the periodic ssl queue when due and not before; a
certificate the CA refuses leaves the site on HTTP with a warning; an operator's own
certificate is used once checked."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from acmehelpers import Pebble, start_pebble
from provisionhelpers import Lab, NginxServer, free_port, start_nginx, world_readable_dir


@pytest.fixture(scope="module")
def web() -> Iterator[NginxServer]:
    server = start_nginx(world_readable_dir("hostctl-https-nginx-"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pebble(web: NginxServer) -> Iterator[Pebble]:
    if subprocess.run(["which", "certbot"], capture_output=True).returncode != 0:
        pytest.skip("certbot is not installed")
    server = start_pebble(web.port)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ssl_port() -> int:
    return free_port()


@pytest.fixture
def lab(run_hostctl, home: Path, web: NginxServer, pebble: Pebble, ssl_port: int,
        request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-https-www-"), web,
              name=request.node.name[:40])
    lab.server("@srv", "--http_ssl_port", str(ssl_port), "--ssl_acme_directory",
               pebble.directory, "--ssl_ca_bundle", str(pebble.ca_bundle),
               "--admin_email", "hostmaster@example.com")
    lab.platform()
    yield lab
    lab.close()


def https_get(port: int, host: str, path: str, cafile: Path) -> tuple[int, str, dict[str, str],
                                                                      str]:
    """GET https://HOST/PATH from 127.0.0.1:PORT, the certificate verified against
    ``cafile`` for HOST (SNI); the answer and the certificate's serial."""
    context = ssl.create_default_context(cafile=str(cafile))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=host) as conn:
        der = conn.getpeercert(binary_form=True)
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        res = http.client.HTTPResponse(conn)  # type: ignore[arg-type]
        res.begin()
        body = res.read().decode("utf-8", "replace")
        headers = dict(res.getheaders())
    serial = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"],
                            input=der, capture_output=True, check=True).stdout.decode()
    return res.status, body, headers, serial.strip().split("=")[-1].upper()


def test_a_site_gets_a_certificate_and_is_served_over_https(
        lab: Lab, web: NginxServer, pebble: Pebble, ssl_port: int) -> None:
    root = pebble.root_file()
    lab.site("@secure.test", "@plat", "--aliases", "www.secure.test", "--redirection", "yes",
             "--ssl_enabled", "yes")
    doc = lab.must("install", "@secure.test", "queue")
    assert doc["result"]["certificate_source"] == "acme", doc
    status, body, _, serial = https_get(ssl_port, "secure.test", "/", root)
    assert status == 200 and "Welcome to secure.test" in body
    # HTTP sends to HTTPS; the alias to the uri, over either
    status, _, headers = web.get("secure.test", "/a/page?x=1")
    assert (status, headers["Location"]) == (301, "https://secure.test/a/page?x=1")
    status, _, headers = web.get("www.secure.test", "/b")
    assert (status, headers["Location"]) == (301, "https://secure.test/b")
    status, _, headers, alias_serial = https_get(ssl_port, "www.secure.test", "/c", root)
    assert (status, headers["Location"], alias_serial) == (301, "https://secure.test/c",
                                                           serial)

    # not due: the periodic queue's task leaves it; due: a new certificate is served
    lab.ok("dispatch", "--queue", "ssl", "--force")
    lab.ok("wait-queue", "--once")
    ran = [t for t in json.loads(lab.ok("task", "list", "--json").out) if t["type"] == "ssl"]
    assert [t["status"] for t in ran] == ["success"], ran
    assert ran[0]["result"]["certificate_renewed"] is False
    assert https_get(ssl_port, "secure.test", "/", root)[3] == serial
    lab.save("@srv", "--ssl_renew_days", "3650")  # pebble's certificates last 5 years
    doc = lab.must("ssl", "@secure.test", "queue")
    assert doc["result"]["certificate_renewed"] is True
    renewed = https_get(ssl_port, "secure.test", "/", root)[3]
    assert renewed != serial
    lab.save("@srv", "--ssl_renew_days", "null")

    # a new alias: the certificate no longer covers the names, so verify gets another
    lab.save("@secure.test", "--aliases", "www.secure.test,old.secure.test")
    lab.must("verify", "@secure.test", "queue")
    status, _, headers, serial3 = https_get(ssl_port, "old.secure.test", "/", root)
    assert status == 301 and serial3 not in (serial, renewed)

    lab.must("disable", "@secure.test")
    status, body, _, _ = https_get(ssl_port, "secure.test", "/", root)
    assert status == 503 and "disabled" in body
    lab.must("delete", "@secure.test")
    assert not (lab.home / "acme" / "config" / "live" / "secure.test").exists()


def test_a_certificate_the_ca_refuses_leaves_the_site_on_http(
        lab: Lab, web: NginxServer, pebble: Pebble) -> None:
    # this server's sites listen on another port than the one pebble checks: the CA's
    # HTTP-01 request reaches nginx's default server, which knows no such site
    fields = web.server_fields(f"{lab.name}-elsewhere")
    fields[fields.index("--http_port") + 1] = str(free_port())
    lab.save("@elsewhere", "--context_type", "server", *fields, "--db_service_type",
             "sqlite", "--ssl_acme_directory", pebble.directory, "--ssl_ca_bundle",
             str(pebble.ca_bundle))
    lab.platform("@plat2", "@elsewhere")
    lab.site("@refused.test", "@plat2", "--ssl_enabled", "yes")
    doc = lab.must("install", "@refused.test", "queue", status="warning")
    warning = json.dumps(doc["result"])
    assert "HTTPS is not set up yet: certbot could not get a certificate for refused.test" \
        in warning, doc
    vhost = lab.vhost("@elsewhere", "@refused.test").read_text()
    assert "ssl_certificate" not in vhost and "Welcome" not in vhost
    assert not (lab.home / "acme" / "config" / "live" / "refused.test").exists()
    # the periodic queue tries again, and fails the same way, saying why
    doc = lab.must("ssl", "@refused.test", status="error")
    assert "certbot could not get a certificate" in json.dumps(doc["result"])


def test_an_operators_certificate_is_used_once_checked(
        lab: Lab, ssl_port: int, tmp_path: Path) -> None:
    def make(name: str, names: list[str], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        sans = ",".join(f"DNS:{n}" for n in names)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "30", "-keyout", str(folder / "privkey.pem"), "-out",
                        str(folder / "fullchain.pem"), "-subj", f"/CN={names[0]}",
                        "-addext", f"subjectAltName={sans}"], check=True,
                       capture_output=True, timeout=60)
        (folder / "privkey.pem").chmod(0o600)

    store = lab.home / "ssl"
    make("own", ["own.test", "www.own.test"], store / "own")
    lab.site("@own.test", "@plat", "--aliases", "www.own.test", "--ssl_enabled", "yes",
             "--ssl_key", "own")
    doc = lab.must("install", "@own.test")
    assert doc["result"]["certificate_source"] == "operator"
    status, body, _, _ = https_get(ssl_port, "www.own.test", "/", store / "own" /
                                   "fullchain.pem")
    assert status == 200 and "Welcome to own.test" in body

    make("other", ["other.test"], tmp_path / "other")
    (store / "own" / "privkey.pem").write_bytes((tmp_path / "other" / "privkey.pem")
                                                .read_bytes())
    doc = lab.must("verify", "@own.test", status="error")
    assert "privkey.pem is not the key of fullchain.pem" in json.dumps(doc["result"]), doc
    make("narrow", ["own.test"], store / "narrow")
    lab.save("@own.test", "--ssl_key", "narrow")
    doc = lab.must("verify", "@own.test", status="error")
    assert "does not cover www.own.test" in json.dumps(doc["result"]), doc
    # the site is still served with the certificate it had
    assert https_get(ssl_port, "own.test", "/", store / "own" / "fullchain.pem")[0] == 200
