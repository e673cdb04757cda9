"""Webhooks ([notify.webhooks.NAME]): a real HTTP receiver on loopback; the HMAC signature,
what is sent and what is not, the retries while the receiver fails or is down, and the
deliveries surviving kill -9 of the runner that sends them (each one arrives; a repeat
carries the same delivery id)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import hostctl_exe
from runnerhelpers import Procs, add_task, save_sites, status_of, wait_for, write_config

SECRET = b"a-webhook-secret-of-the-panel"


class Receiver:
    """An HTTP server on loopback that keeps every POST; ``answers`` are the statuses of
    the next requests (then 200)."""

    def __init__(self, port: int = 0, delay: float = 0.0) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        self.delay = delay
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(owner.delay)
                status = owner.answers.pop(0) if owner.answers else 200
                owner.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def docs(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _h, body in self.got]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def configure(home: Path, url: str, **hook: Any) -> None:
    secret = home.parent / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    os.chmod(secret, 0o600)
    write_config(home, {
        "queues": {"cron": {"enabled": False}},
        "tasks": {"ok": {"command": ["true"], "context_types": ["site"]},
                  "fail": {"command": ["sh", "-c", "echo 'quota exceeded' >&2; exit 3"],
                           "context_types": ["site"]}},
        "notify": {"webhooks": {"panel": {"url": url, "secret_file": str(secret), **hook}}}})


def once(home: Path) -> None:
    res = subprocess.run([hostctl_exe(), "wait-queue", "--once"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "HOSTCTL_HOME": str(home)})
    assert res.returncode == 0, res.stderr


def pending(home: Path) -> list[str]:
    folder = home / "spool" / "notify"
    return sorted(n for n in os.listdir(folder) if n.endswith(".json")) \
        if folder.exists() else []


def test_a_failed_task_is_posted_signed_and_nothing_else(
        run_hostctl: Any, home: Path, receiver: Receiver) -> None:
    configure(home, receiver.url)
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    failed = add_task(run_hostctl, "fail", "@a.example")
    add_task(run_hostctl, "ok", "@b.example")  # success: not asked for
    once(home)
    [(headers, body)] = receiver.got
    assert headers["x-hostctl-signature"] == "sha256=" + hmac.new(
        SECRET, body, hashlib.sha256).hexdigest()
    assert headers["x-hostctl-event"] == "task.ended"
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert (doc["event"], doc["hook"], doc["outcome"]) == ("task.ended", "panel", "error")
    assert doc["delivery"] == headers["x-hostctl-delivery"]
    assert doc["task"]["id"] == failed
    assert doc["task"]["reason"] == "exited with status 3: quota exceeded"
    assert "log" not in doc["task"] and str(home) not in body.decode()
    assert pending(home) == []


def test_deliveries_are_tried_again_until_the_receiver_takes_them(
        run_hostctl: Any, home: Path, receiver: Receiver, procs: Procs) -> None:
    configure(home, receiver.url, outcomes=["error", "success"], types=["fail"])
    save_sites(run_hostctl, home, ["a.example"])
    receiver.answers = [500, 503]
    procs.start("wait-queue", "--max-runtime", "120")
    task = add_task(run_hostctl, "fail", "@a.example")
    wait_for(lambda: len(receiver.got) == 3, 30, "three tries")
    ids = {h["x-hostctl-delivery"] for h, _b in receiver.got}
    assert len(ids) == 1 and all(d["task"]["id"] == task for d in receiver.docs())
    wait_for(lambda: pending(home) == [], 10, "the delivery to go")
    time.sleep(2)
    assert len(receiver.got) == 3  # delivered: never again
    add_task(run_hostctl, "ok", "@a.example")  # not a type it asked for
    wait_for(lambda: status_of(run_hostctl, task) == "error", 10, "the end")
    time.sleep(1)
    assert len(receiver.got) == 3


def test_a_receiver_that_is_down_gets_it_once_it_is_back(
        run_hostctl: Any, home: Path, receiver: Receiver) -> None:
    port = receiver.port
    receiver.close()  # down: the connection is refused
    configure(home, f"http://127.0.0.1:{port}/hook")
    save_sites(run_hostctl, home, ["a.example"])
    task = add_task(run_hostctl, "fail", "@a.example")
    once(home)
    [name] = pending(home)
    assert name.endswith(".1.json")  # one attempt made, the next one later
    back = Receiver(port)
    try:
        time.sleep(1.2)  # the backoff before the second try
        assert run_hostctl("dispatch").code == 0
        wait_for(lambda: len(back.got) == 1, 10, "the delivery")
        assert back.docs()[0]["task"]["id"] == task and pending(home) == []
    finally:
        back.close()


def test_deliveries_survive_kill_9_of_the_runner_that_sends_them(
        run_hostctl: Any, home: Path, procs: Procs) -> None:
    slow = Receiver(delay=0.15)  # each answer takes a while: kills land mid-send
    try:
        configure(home, slow.url)
        sites = [f"s{i}.example" for i in range(12)]
        save_sites(run_hostctl, home, sites)
        ids = [add_task(run_hostctl, "fail", f"@{s}") for s in sites]
        rng = random.Random(5)
        kills = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                len({d["task"]["id"] for d in slow.docs()}) < len(ids)):
            daemon = procs.start("wait-queue", "--max-runtime", "120")
            time.sleep(rng.uniform(0.2, 0.8))
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait()
            kills += 1
        if len({d["task"]["id"] for d in slow.docs()}) < len(ids):
            once(home)  # a last runner, not killed
        got = slow.docs()
        assert {d["task"]["id"] for d in got} == set(ids)  # every end arrived
        per_delivery: dict[str, set[str]] = {}
        for d in got:
            per_delivery.setdefault(d["delivery"], set()).add(d["task"]["id"])
        assert all(len(t) == 1 for t in per_delivery.values())
        assert len(per_delivery) == len(ids)  # one delivery each: a repeat keeps its id
        assert len(got) - len(ids) <= kills
        assert pending(home) == []
    finally:
        slow.close()


@pytest.mark.parametrize("hook", [{"url": "ftp://x"}, {"url": "http://x", "outcomes": ["bad"]},
                                  {"url": "http://x", "secret_file": "relative"},
                                  {"url": "http://x", "timeout": 0}, {"uri": "http://x"}])
def test_a_wrong_webhook_is_one_line(run_hostctl: Any, home: Path, hook: dict[str, Any]) -> None:
    write_config(home, {"notify": {"webhooks": {"panel": hook}}})
    res = run_hostctl("task", "list")
    assert res.code == 2 and "notify.webhooks.panel" in res.err \
        and len(res.err.strip().splitlines()) == 1, res


class SmtpSink:
    """A small SMTP server on loopback that keeps each message it is given (RFC 5321's
    commands a client sends: HELO/EHLO, MAIL, RCPT, DATA, QUIT)."""

    def __init__(self) -> None:
        import socketserver

        self.messages: list[tuple[str, list[str], bytes]] = []
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"220 sink ESMTP\r\n")
                sender, rcpts = "", []
                while line := self.rfile.readline():
                    cmd = line.decode().strip()
                    verb = cmd.split(" ", 1)[0].upper()
                    if verb in ("HELO", "EHLO"):
                        self.wfile.write(b"250 sink\r\n")
                    elif verb == "MAIL":
                        sender = cmd.split(":", 1)[1].strip()
                        self.wfile.write(b"250 ok\r\n")
                    elif verb == "RCPT":
                        rcpts.append(cmd.split(":", 1)[1].strip())
                        self.wfile.write(b"250 ok\r\n")
                    elif verb == "DATA":
                        self.wfile.write(b"354 go on\r\n")
                        data = b""
                        while (part := self.rfile.readline()) not in (b".\r\n", b""):
                            data += part
                        owner.messages.append((sender, rcpts, data))
                        sender, rcpts = "", []
                        self.wfile.write(b"250 kept\r\n")
                    elif verb == "QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"250 ok\r\n")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_failed_task_is_mailed_through_smtp(run_hostctl: Any, home: Path,
                                              receiver: Receiver) -> None:
    from email import message_from_bytes

    sink = SmtpSink()
    try:
        configure(home, receiver.url)
        config = (home / "config.toml").read_text()
        (home / "config.toml").write_text(
            config + '\n[notify.email.ops]\nto = ["ops@example.test", "dev@example.test"]\n'
            f'from = "hostctl@web1.example.test"\nsmtp = "127.0.0.1:{sink.port}"\n')
        save_sites(run_hostctl, home, ["a.example", "b.example"])
        failed = add_task(run_hostctl, "fail", "@a.example")
        add_task(run_hostctl, "ok", "@b.example")
        once(home)
        [(sender, rcpts, data)] = sink.messages
        assert sender == "<hostctl@web1.example.test>"
        assert rcpts == ["<ops@example.test>", "<dev@example.test>"]
        mail = message_from_bytes(data)
        assert mail["Subject"] == "hostctl: fail on @a.example: error"
        delivery = mail["X-Hostctl-Delivery"]
        assert mail["Message-ID"] == f"<{delivery}@hostctl>"
        text = mail.get_payload(decode=True).decode()
        assert f"id: {failed}" in text and "reason: exited with status 3: quota exceeded" in text
        assert len(receiver.got) == 1  # the webhook too, a delivery of its own
        assert receiver.docs()[0]["delivery"] != delivery and pending(home) == []
    finally:
        sink.close()
    # the mail server down: kept, and tried again later
    task = add_task(run_hostctl, "fail", "@a.example")
    once(home)
    mails = [n for n in pending(home)]
    assert len(mails) == 1 and mails[0].endswith(".1.json"), mails
    assert task


def test_an_answer_that_is_not_http_is_tried_again(run_hostctl: Any, home: Path) -> None:
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def garbage() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"this is not HTTP\r\n\r\n")

    threading.Thread(target=garbage, daemon=True).start()
    try:
        configure(home, f"http://127.0.0.1:{server.getsockname()[1]}/hook")
        save_sites(run_hostctl, home, ["a.example"])
        add_task(run_hostctl, "fail", "@a.example")
        once(home)
        [name] = pending(home)
        assert name.endswith(".1.json")  # kept for its next try, the runner unharmed
        assert "not delivered" in (home / "logs" / "hostctl.log").read_text()
    finally:
        server.close()
