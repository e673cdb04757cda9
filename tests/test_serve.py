"""``hostctl serve``: /metrics and the status page over real HTTP, read by a real
headless Chromium (the page's live parts: a task queued during the test appears, runs
and ends on it, its log followed live); read-only, loopback unless a token is given,
its own Host names only. A screenshot of the page is kept in tests/artifacts/."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, chromium
from prometheus_client.parser import text_string_to_metric_families
from runnerhelpers import Procs, add_task, save_sites, wait_for, write_config

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def start_serve(procs: Procs, home: Path, *argv: str,
                env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    log = home.parent / f"serve{len(procs.started)}.log"
    proc = procs.start("serve", "--listen", "127.0.0.1:0", *argv, log=log,
                       env={**os.environ, "HOSTCTL_HOME": str(home), **(env or {})})
    found: list[str] = []

    def url() -> bool:
        text = log.read_text() if log.exists() else ""
        found[:] = re.findall(r"serving (http://\S+)", text)
        return bool(found) or proc.poll() is not None

    wait_for(url, 30, "serve to listen")
    assert found, log.read_text()
    return proc, found[0]


def get(url: str, path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


@pytest.fixture
def served(run_hostctl: Any, home: Path, procs: Procs) -> Iterator[tuple[str, Path]]:
    flag = home.parent / "go"
    write_config(home, {"tasks": {
        "step": {"command": ["sh", "-c", 'echo "first <b>line</b>"; '
                             'while [ ! -e "$1" ]; do sleep 0.05; done; echo second line',
                             "sh", str(flag)], "context_types": ["site"]},
        "broken": {"command": ["sh", "-c", "echo 'the disk is full' >&2; exit 2"],
                   "context_types": ["site"]}}})
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    proc, url = start_serve(procs, home)
    yield url, flag
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed")
def test_a_browser_sees_a_task_appear_run_and_end_live(
        run_hostctl: Any, home: Path, procs: Procs, served: tuple[str, Path],
        tmp_path: Path) -> None:
    url, flag = served
    failed = add_task(run_hostctl, "broken", "@b.example")
    assert run_hostctl("wait-queue", "--once").code == 0
    procs.start("wait-queue", "--max-runtime", "120")
    browser = Browser(tmp_path / "profile")
    try:
        browser.open(url)
        browser.wait("document.body && document.body.dataset.updated", what="a live update")
        # the failure is there with its reason
        row = f'#failures tr[data-id="{failed}"]'
        assert "the disk is full" in browser.wait(
            f'document.querySelector(\'{row}\')?.textContent', what="the failure")
        task = add_task(run_hostctl, "step", "@a.example")  # queued while the page is open
        browser.wait(f'!!document.querySelector(\'#running tr[data-id="{task}"]\')',
                     what="the task running on the page")
        flag.touch()
        browser.wait(f'!!document.querySelector(\'#recent tr[data-id="{task}"] td.success\') '
                     f'&& !document.querySelector(\'#running tr[data-id="{task}"]\')',
                     what="the task ended on the page")
        png = browser.screenshot(ARTIFACTS / "serve-status.png")
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
        # the task's page: its log, followed to the end, as text (never as markup)
        browser.open(f"{url}tasks/{task}")
        browser.wait("document.body.dataset.ended === '1'", what="the log to its end")
        log = browser.eval("document.getElementById('log').textContent")
        assert "first <b>line</b>" in log and "second line" in log
        assert browser.eval("!document.querySelector('#log b')")
        assert browser.eval("!!document.querySelector('#task td.success')")
        browser.screenshot(ARTIFACTS / "serve-task.png")
        # a site's history
        browser.open(f"{url}?context=@a.example")
        ids = browser.wait("document.body.dataset.updated && [...document.querySelectorAll("
                           "'#recent tr[data-id]')].map(r => r.dataset.id)")
        assert ids == [task]
    finally:
        browser.close()


def test_metrics_and_the_api_over_http(run_hostctl: Any, served: tuple[str, Path]) -> None:
    url, _flag = served
    task = add_task(run_hostctl, "broken", "@b.example")
    assert run_hostctl("wait-queue", "--once").code == 0
    status, headers, body = get(url, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    [sample] = fams["hostctl_task_attempts"].samples
    assert sample.labels == {"type": "broken", "outcome": "error"}
    status, _, body = get(url, f"/api/tasks/{task}")
    doc = json.loads(body)
    assert status == 200 and doc["reason"] == "exited with status 2: the disk is full"
    assert "log" not in doc  # a path on the host
    status, headers, body = get(url, f"/api/tasks/{task}/log?offset=4")
    assert status == 200 and headers["x-hostctl-ended"] == "1"
    whole = get(url, f"/api/tasks/{task}/log")[2]
    assert body == whole[4:] and b"the disk is full" in whole
    status, _, body = get(url, "/api/status")
    assert json.loads(body)["failures"][0]["id"] == task
    for path, code in (("/tasks/zz", 404), ("/nothing", 404), (f"/tasks/{'0' * 20}", 404),
                       ("/?context=..", 400), (f"/api/tasks/{task}/log?offset=x", 400)):
        assert get(url, path)[0] == code, path


def test_it_is_read_only_and_answers_its_own_names_only(served: tuple[str, Path]) -> None:
    url, _flag = served
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = get(url, "/", method)
        assert status == 405 and headers["allow"] == "GET, HEAD", method
    status, headers, body = get(url, "/", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    port = url.rstrip("/").rsplit(":", 1)[1]
    assert get(url, "/", headers={"Host": f"rebound.example:{port}"})[0] == 421
    assert get(url, "/", headers={"Host": f"localhost:{port}"})[0] == 200


def test_off_loopback_it_needs_a_token(run_hostctl: Any, home: Path, procs: Procs,
                                       tmp_path: Path, hostctl_process: Any) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    res = hostctl_process("serve", "--listen", "0.0.0.0:0")
    assert res.returncode == 2 and "needs a token" in res.stderr, res
    res = hostctl_process("serve", "--listen", "0.0.0.0:0",
                          env={"HOSTCTL_SERVE_TOKEN": "short"})
    assert res.returncode == 2 and "shorter than 16" in res.stderr, res
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-0123456789\n")
    os.chmod(token_file, 0o644)
    res = hostctl_process("serve", "--listen", "0.0.0.0:0", "--token-file", str(token_file))
    assert res.returncode == 2 and "chmod 600" in res.stderr, res
    os.chmod(token_file, 0o600)
    for bad in ("localhost", "web1.example:80", "1.2.3.4:99999", "unix:relative"):
        res = hostctl_process("serve", "--listen", bad)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, (bad, res)
    proc = procs.start("serve", "--listen", "0.0.0.0:0", "--token-file", str(token_file),
                       log=tmp_path / "serve.log")
    wait_for(lambda: "serving" in (tmp_path / "serve.log").read_text(), 30, "serve")
    port = re.findall(r":(\d+)/", (tmp_path / "serve.log").read_text())[0]
    address = socket.gethostbyname(socket.gethostname())
    url = f"http://{address}:{port}/"
    status, headers, _ = get(url, "/metrics")
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    assert get(url, "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert get(url, "/metrics", headers={
        "Authorization": "Bearer s3cret-token-0123456789"})[0] == 200
    basic = base64.b64encode(b"anyone:s3cret-token-0123456789").decode()
    assert get(url, "/", headers={"Authorization": f"Basic {basic}"})[0] == 200
    assert "s3cret" not in (tmp_path / "serve.log").read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_a_unix_socket(run_hostctl: Any, home: Path, procs: Procs, tmp_path: Path) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    path = tmp_path / "hostctl.sock"
    procs.start("serve", "--listen", f"unix:{path}", log=tmp_path / "serve.log")
    wait_for(path.exists, 30, "the socket")
    assert (path.stat().st_mode & 0o777) == 0o660
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(str(path))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 200") and b"hostctl_queue_paused 0" in data
