"""A task that changes what nginx serves ends only when nginx serves it; a warning that
the change brings (a conflicting server name) fails it; and when no nginx runs at all,
the task starts one. Every check below asks the site once, right after the task ended:
nothing polls."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import (
    AS_ROOT,
    NGINX_CONF,
    Lab,
    NginxServer,
    expect_answer,
    free_port,
    http_get,
    need,
    start_nginx,
    world_readable_dir,
)


@pytest.fixture(scope="module")
def nginx() -> Iterator[NginxServer]:
    server = start_nginx(world_readable_dir("hostctl-nginx-"))
    yield server
    server.stop()


@pytest.fixture
def lab(run_hostctl, home: Path, nginx: NginxServer, request) -> Iterator[Lab]:
    lab = Lab(run_hostctl, home, world_readable_dir("hostctl-www-"), nginx,
              request.node.name.lower()[:60])
    lab.server()
    lab.platform()
    yield lab
    lab.close()


def test_every_change_is_served_when_its_task_ends(lab: Lab, nginx: NginxServer) -> None:
    site = lab.site("@flip.example")
    lab.must("install", site)
    expect_answer(nginx, "flip.example", lambda s, b: s == 200 and "Welcome" in b, "installed")
    for n in range(12):  # each reload races the next request unless the task waits for it
        lab.must("disable", site)
        expect_answer(nginx, "flip.example", lambda s, b: s == 503, f"disabled ({n})")
        lab.must("enable", site)
        expect_answer(nginx, "flip.example", lambda s, b: s == 200, f"enabled again ({n})")
    lab.must("disable", site)
    lab.must("delete", site)
    expect_answer(nginx, "flip.example", lambda s, b: s == 404 and b == "no such site\n",
                  "gone once deleted")


def test_a_conflicting_server_name_fails_the_task_and_changes_nothing(
        lab: Lab, nginx: NginxServer) -> None:
    site = lab.site("@clash.example")
    lab.must("install", site)
    vhost = lab.vhost("@srv", site)
    before = vhost.read_bytes()
    # a server block nginx already has for the name (another tool's, an old file)
    other = vhost.parent / "zz-by-hand.conf"
    other.write_text(f"server {{ listen 127.0.0.1:{nginx.port}; server_name "
                     "www.clash.example; return 200 'by hand\\n'; }\n")
    try:
        doc = lab.task("verify", site)
        assert doc["status"] == "success", doc  # no name of the site's is taken yet
        lab.save(site, "--aliases", "www.clash.example")
        doc = lab.task("verify", site)
        assert doc["status"] == "error", doc
        assert "conflicting server name" in str(doc["result"]), doc
        assert vhost.read_bytes() == before  # put back as it was
        expect_answer(nginx, "www.clash.example", lambda s, b: b == "by hand\n",
                      "the other block still serving its name")
    finally:
        other.unlink()


def test_a_warning_the_configuration_had_before_fails_no_task(
        lab: Lab, nginx: NginxServer) -> None:
    # two blocks by hand that conflict with each other: nginx -t and the master (in its
    # error log, at every reload) warn about them, whatever a task changes
    site = lab.site("@calm.example")
    lab.must("install", site)
    other = lab.vhost("@srv", site).parent / "zz-by-hand.conf"
    block = f"server {{ listen 127.0.0.1:{nginx.port}; server_name twice.example; }}\n"
    other.write_text(block * 2)
    try:
        lab.must("disable", site)
        assert "conflicting server name \"twice.example\"" in nginx.error_log()
        expect_answer(nginx, "calm.example", lambda s, b: s == 503, "disabled")
        lab.must("enable", site)
        expect_answer(nginx, "calm.example", lambda s, b: s == 200, "enabled")
    finally:
        other.unlink()


def test_a_reload_the_running_nginx_refuses_fails_the_task_with_its_reason(
        lab: Lab, nginx: NginxServer) -> None:
    # nginx -t binds nothing, so it accepts a listen address another program holds; the
    # master finds out on the reload, logs it and goes on serving the old configuration
    site = lab.site("@stays.example")
    lab.must("install", site)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        fields = nginx.server_fields(f"{lab.name}-busy")
        fields[fields.index("--http_port") + 1] = str(port)
        lab.save("@busy", "--context_type", "server", *fields, "--db_service_type", "sqlite")
        lab.platform("@busyplat", "@busy")
        busy = lab.site("@busy.example", "@busyplat")
        doc = lab.task("install", busy)
        assert doc["status"] == "error", doc
        assert f"bind() to 127.0.0.1:{port} failed" in str(doc["result"]), doc
        # the folder as it was (empty: neither the vhost nor a probe on the taken port),
        # so the next change of any site of this nginx is served again
        folder = lab.vhost("@busy", busy).parent
        assert sorted(p.name for p in folder.iterdir()) == [], list(folder.iterdir())
    finally:
        taken.close()
    lab.must("disable", site)
    expect_answer(nginx, "stays.example", lambda s, b: s == 503, "the other site disabled")


def test_a_task_starts_nginx_when_none_runs(lab: Lab, tmp_path: Path) -> None:
    binary = need("nginx", "/usr/sbin/nginx")
    base = world_readable_dir("hostctl-nginx-cold-")
    (base / "tmp").mkdir()
    (base / "configs").mkdir()
    port = free_port()
    user = "user nobody nogroup;\n" if AS_ROOT else ""
    types = "types { text/html html; text/plain txt; }"
    conf = base / "nginx.conf"
    # as a system's nginx: it puts itself in the background
    conf.write_text(NGINX_CONF.format(base=base, port=port, types=types, user=user)
                    .replace("daemon off;\n", ""))
    lab.save("@cold", "--context_type", "server", "--http_service_type", "nginx",
             "--http_port", str(port), "--ip_addresses", "127.0.0.1",
             "--nginx_binary", binary, "--nginx_conf", str(conf),
             "--config_path", str(base / "configs" / "cold"), "--db_service_type", "sqlite")
    lab.platform("@coldplat", "@cold")
    site = lab.site("@cold.example", "@coldplat")
    try:
        doc = lab.must("install", site)
        assert "nginx was not running: started it" in lab.log(doc["id"])
        status, body, _ = http_get(port, "cold.example")
        assert status == 200 and "Welcome" in body, (status, body)
    finally:
        pid = (base / "nginx.pid").read_text().strip() if (base / "nginx.pid").exists() else ""
        if pid.isdigit():
            os.kill(int(pid), signal.SIGQUIT)
