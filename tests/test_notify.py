"""Webhooks ([notify.webhooks.NAME]): a real HTTP receiver on loopback; the HMAC signature,
what is sent and what is not, the retries while the receiver fails or is down, and the
sender processes the runners start: a kill -9 of a runner (the daemon, dispatch,
wait-queue --once) cuts no request off, so each delivery arrives exactly once; two
senders at once send each delivery once; only a sender itself killed mid-request sends it
again, with the same delivery id. The holds: a worker killed -9 once an end is recorded,
or once its delivery is written but not due, and a worker killed mid-task whose loss a
sweep records (the sweeper killed too), on the spool and in a cluster: each notice
arrives once, from the next runner. What a review found: an answer trickled in byte by
byte is cut off at the hook's timeout; a broken config.toml starts no sender until it is
fixed; dispatch's output ends while the sender it leaves goes on; a probe of the sender
lock puts no sender off; garbage in the folder is set aside; a second TERM ends the
daemon's wait for its sender; a sender that finds every delivery held exits 75 and the
daemon waits before the next."""

from __future__ import annotations

import fcntl
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
from hypothesis import given, settings
from hypothesis import strategies as st
from pghelpers import new_database
from runnerhelpers import (
    Procs,
    add_task,
    hostctl_log,
    save_sites,
    status_of,
    task_json,
    wait_exit,
    wait_for,
    write_config,
    written_in_place,
)

from hostctl.config import OUTCOMES, Config, Webhook
from hostctl.errors import ExitStatus
from hostctl.files import flocked
from hostctl.runners.notify import (
    FLUSH_WAIT,
    REQUEST_MARGIN,
    SENDER_COMMAND,
    Deliveries,
    Sender,
    cancelled_queued,
    delivery_id,
)

SECRET = b"a-webhook-secret-of-the-panel"


class Receiver:
    """An HTTP server on loopback that keeps every POST; ``answers`` are the statuses of
    the next requests (then 200). A request is answered once ``hold`` (if given) is set
    and ``delay`` has passed; ``arrived`` has its delivery id from the moment it came.
    ``trickle``: the answer goes out one byte every that many seconds (each read of the
    client gets a byte well within its timeout)."""

    def __init__(self, port: int = 0, delay: float = 0.0,
                 hold: threading.Event | None = None, trickle: float = 0.0) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.arrived: list[str] = []
        self.answers: list[int] = []
        self.delay = delay
        self.hold = hold
        self.trickle = trickle
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.arrived.append(self.headers["X-Hostctl-Delivery"])
                if owner.hold is not None:
                    owner.hold.wait(60)
                time.sleep(owner.delay)
                status = owner.answers.pop(0) if owner.answers else 200
                owner.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if owner.trickle:
                    self.close_connection = True
                    for byte in f"HTTP/1.0 {status} OK\r\nContent-Length: 0\r\n\r\n".encode():
                        try:
                            self.wfile.write(bytes([byte]))
                        except OSError:
                            return  # the client has gone
                        time.sleep(owner.trickle)
                    return
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

    def in_flight(self) -> bool:
        """Whether a request came and is not answered yet."""
        return len(self.arrived) > len(self.got)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def senders(home: Path) -> list[int]:
    """The notices' senders of ``home`` at work: hostctl --home HOME notify-send."""
    found = []
    want = [b"--home", os.fsencode(home), SENDER_COMMAND.encode()]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argv[i:i + 3] == want for i in range(len(argv))):
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def no_sender_left(home: Path) -> Iterator[None]:
    """A sender outlives the runner that started it, never the test."""
    yield
    try:
        wait_for(lambda: not senders(home), 90, "the senders to end")
    finally:
        for pid in senders(home):
            os.kill(pid, signal.SIGKILL)


def sender_pids(home: Path) -> set[str]:
    """The pids of the senders that said in hostctl.log what they did."""
    return {line.split("[", 1)[1].split("]", 1)[0] for line in hostctl_log(home).splitlines()
            if "notices: " in line and ("delivered" in line or "another sender" in line)}


def exactly_once(got: list[dict[str, Any]], ids: list[str]) -> None:
    """Every task's end arrived, each in one delivery that arrived once."""
    assert {d["task"]["id"] for d in got} == set(ids)  # every end arrived
    deliveries = [d["delivery"] for d in got]
    repeats = len(deliveries) - len(set(deliveries))
    assert repeats == 0 and len(got) == len(ids), f"{repeats} repeat(s) of {len(ids)}"


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


def kill_mid_task(run_hostctl: Any, procs: Procs, task: str) -> None:
    """A ``wait-queue --once`` that starts ``task`` and is killed -9 as it runs."""
    worker = procs.start("wait-queue", "--once")
    wait_for(lambda: task_json(run_hostctl, task)["attempts"], 60, "the task to start")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()


def test_a_paused_queue_still_tells_of_its_ended_tasks_with_only_cron(
        run_hostctl: Any, home: Path, receiver: Receiver) -> None:
    """A pause stops tasks, not their notices: a delivery that failed before the pause
    is tried again by cron's dispatch while the queue stays paused."""
    port = receiver.port
    receiver.close()  # down: the first try fails
    configure(home, f"http://127.0.0.1:{port}/hook")
    save_sites(run_hostctl, home, ["a.example"])
    task = add_task(run_hostctl, "fail", "@a.example")
    add_task(run_hostctl, "ok", "@a.example")
    once(home)
    assert len(pending(home)) == 1
    assert run_hostctl("queue", "pause").code == 0
    queued = add_task(run_hostctl, "fail", "@a.example")
    back = Receiver(port)
    try:
        time.sleep(1.2)  # the backoff before the second try
        res = run_hostctl("dispatch")
        assert res.code == 0, res
        wait_for(lambda: len(back.got) == 1, 10, "the delivery")
        assert back.docs()[0]["task"]["id"] == task and pending(home) == []
        assert status_of(run_hostctl, queued) == "queued"  # and nothing started
    finally:
        back.close()


def test_a_pause_tells_of_the_tasks_it_finds_lost(
        run_hostctl: Any, home: Path, receiver: Receiver, procs: Procs) -> None:
    """``queue pause`` records the end of a task whose worker died (its sweep): that
    notice goes out then, not at the next resume (with only cron's dispatch there is no
    daemon to send it, and a dispatch on a paused queue starts nothing)."""
    write_config(home, {
        "queues": {"cron": {"enabled": False}},
        "worker": {"backoff_base": 3600, "backoff_max": 3600},
        "tasks": {"slow": {"command": ["sleep", "120"], "context_types": ["site"]}},
        "notify": {"webhooks": {"panel": {"url": receiver.url, "outcomes": ["lost"]}}}})
    save_sites(run_hostctl, home, ["a.example"])
    lost = add_task(run_hostctl, "slow", "@a.example")
    kill_mid_task(run_hostctl, procs, lost)
    res = run_hostctl("queue", "pause")
    assert res.code == 0, res
    assert "died during attempt 1" in res.err
    wait_for(lambda: len(receiver.got) == 1, 30, "the notice of the loss")
    exactly_once(receiver.docs(), [lost])
    assert receiver.docs()[0]["outcome"] == "lost"


def test_a_kill_9_storm_of_the_daemon_sends_each_delivery_exactly_once(
        run_hostctl: Any, home: Path, procs: Procs) -> None:
    slow = Receiver(delay=0.3)  # each answer takes a while: kills land mid-request
    try:
        configure(home, slow.url)
        sites = [f"s{i}.example" for i in range(12)]
        save_sites(run_hostctl, home, sites)
        ids = [add_task(run_hostctl, "fail", f"@{s}") for s in sites]
        rng = random.Random(5)
        kills = mid_request = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(set(slow.arrived)) < len(ids):
            daemon = procs.start("wait-queue", "--max-runtime", "120")
            # at a random moment, most often while a request waits for its answer
            until = time.monotonic() + rng.uniform(0.3, 1.5)
            while time.monotonic() < until and not slow.in_flight():
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.25))
            mid_request += slow.in_flight()
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait()
            kills += 1
        wait_for(lambda: not senders(home), 60, "the senders left behind to end")
        if len(slow.got) < len(ids):
            once(home)  # a last runner, not killed
        assert kills >= 3 and mid_request >= 1, (kills, mid_request)
        exactly_once(slow.docs(), ids)
        assert pending(home) == []
    finally:
        slow.close()


@pytest.mark.parametrize("runner", [("dispatch",), ("wait-queue", "--once")])
def test_a_runner_killed_mid_send_leaves_its_sender_to_finish_alone(
        run_hostctl: Any, home: Path, procs: Procs, runner: tuple[str, ...]) -> None:
    slow = Receiver(delay=0.3)
    try:
        configure(home, slow.url)
        sites = [f"s{i}.example" for i in range(5)]
        save_sites(run_hostctl, home, sites)
        ids = [add_task(run_hostctl, "fail", f"@{s}") for s in sites]
        proc = procs.start(*runner)
        wait_for(slow.in_flight, 60, "a request in flight")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # no runner after it: the sender, re-parented, sends every delivery, then ends
        wait_for(lambda: len(slow.got) >= len(ids) and not senders(home), 30,
                 "the sender to send them all and end")
        exactly_once(slow.docs(), ids)
        assert pending(home) == []
    finally:
        slow.close()


def test_a_sender_killed_mid_request_sends_it_again_with_the_same_id(
        run_hostctl: Any, home: Path, procs: Procs) -> None:
    hold = threading.Event()
    held = Receiver(hold=hold)  # takes the request, answers once released
    try:
        configure(home, held.url)
        save_sites(run_hostctl, home, ["a.example"])
        task = add_task(run_hostctl, "fail", "@a.example")
        runner = procs.start("wait-queue", "--once")
        wait_for(lambda: held.arrived, 60, "the request")
        [pid] = senders(home)
        assert os.getsid(pid) == pid != os.getsid(runner.pid)  # a session of its own
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not senders(home), 10, "the sender to be gone")
        hold.set()  # the receiver answers a sender that is gone
        assert wait_exit(runner, 30, "the runner") == 0
        [name] = pending(home)
        assert name.endswith(".0.json")  # as it was: whether it arrived is not known
        once(home)
        assert len(held.arrived) == 2 and held.arrived[0] == held.arrived[1]
        assert held.docs()[-1]["task"]["id"] == task and pending(home) == []
    finally:
        hold.set()
        held.close()


def test_a_daemon_that_stops_waits_for_its_senders_request(
        run_hostctl: Any, home: Path, procs: Procs) -> None:
    hold = threading.Event()
    held = Receiver(hold=hold)
    try:
        configure(home, held.url)
        save_sites(run_hostctl, home, ["a.example"])
        add_task(run_hostctl, "fail", "@a.example")
        daemon = procs.start("wait-queue", "--max-runtime", "120")
        wait_for(lambda: held.arrived, 60, "the request")
        [pid] = senders(home)
        daemon.send_signal(signal.SIGTERM)
        wait_for(lambda: "waiting for the sender's delivery in flight" in hostctl_log(home),
                 10, "the daemon to wait")
        time.sleep(0.5)
        assert daemon.poll() is None and senders(home) == [pid]
        hold.set()
        assert wait_exit(daemon, 30, "the daemon") == 0
        assert senders(home) == [] and pending(home) == []
        assert len(held.arrived) == 1 and len(held.got) == 1
    finally:
        hold.set()
        held.close()


def test_two_runners_at_once_start_two_senders_and_each_delivery_arrives_once(
        run_hostctl: Any, home: Path, procs: Procs) -> None:
    down = Receiver()
    port = down.port
    down.close()  # refused: the deliveries wait for their next try
    configure(home, f"http://127.0.0.1:{port}/hook")
    sites = [f"s{i}.example" for i in range(8)]
    save_sites(run_hostctl, home, sites)
    ids = [add_task(run_hostctl, "fail", f"@{s}") for s in sites]
    once(home)
    assert len(pending(home)) == len(ids)
    slow = Receiver(port, delay=0.3)
    try:
        time.sleep(1.2)  # the backoff before the second try
        first = procs.start("wait-queue", "--once")
        second = procs.start("dispatch")
        wait_for(lambda: senders(home), 30, "a sender")
        third = procs.start(SENDER_COMMAND)  # a sender beside the one at work
        for proc in (first, second, third):
            assert wait_exit(proc, 60, "a runner") == 0
        wait_for(lambda: not senders(home), 60, "the senders to end")
        exactly_once(slow.docs(), ids)
        assert pending(home) == []
        assert len(sender_pids(home)) >= 2  # each said what it did, or that it stood by
        assert "notices: another sender is at work" in hostctl_log(home)
    finally:
        slow.close()


def test_a_sender_stands_by_while_another_holds_the_lock_and_stops_when_asked(
        tmp_path: Path) -> None:
    hook = Webhook("panel", "http://127.0.0.1:9/hook")
    config = Config(webhooks={"panel": hook})
    deliveries = Deliveries(tmp_path / "notify")
    for n in range(3):
        deliveries.add(hook, "error", {"id": f"t{n}"})
    posted: list[str] = []

    def post(_hook: Any, _body: bytes, delivery: str) -> int:
        posted.append(delivery)
        sender.stop_requested = len(posted) == 2  # a TERM during the second request
        return 200

    sender = Sender(deliveries, config, post=post)
    with flocked(deliveries.lock_path) as mine:
        assert mine
        sent = sender.send()
    assert sent.busy and posted == [] and len(deliveries.pending()) == 3
    sent = sender.send()
    assert (sent.delivered, sent.busy, sent.left) == (2, False, 1)  # finished, no other
    assert len(posted) == 2 and len(deliveries.pending()) == 1
    sender.stop_requested = False
    assert sender.send().delivered == 1 and deliveries.pending() == []


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


# -- the holds: no notice lost to a kill -9 -------------------------------------------------

def holds(home: Path) -> list[str]:
    folder = home / "spool" / "notify"
    return sorted(n for n in os.listdir(folder) if n.startswith("hold.")) \
        if folder.exists() else []


def killed_with(home: Path, procs: Procs, *argv: str, **env: str) -> bool:
    """Run ``hostctl argv`` with ``env`` (a test-only kill point): was it killed there?"""
    proc = procs.start(*argv, env={**os.environ, "HOSTCTL_HOME": str(home), **env})
    return wait_exit(proc, 60, "the runner") == -signal.SIGKILL


@pytest.mark.parametrize("die", ["HOSTCTL_TEST_DIE_AFTER_END", "HOSTCTL_TEST_DIE_BEFORE_DUE"])
def test_a_worker_killed_once_the_end_is_recorded_leaves_its_notice_to_the_next_runner(
        run_hostctl: Any, home: Path, receiver: Receiver, procs: Procs, die: str) -> None:
    configure(home, receiver.url)
    save_sites(run_hostctl, home, ["a.example"])
    task = add_task(run_hostctl, "fail", "@a.example")
    assert killed_with(home, procs, "wait-queue", "--once", **{die: "1"})
    assert status_of(run_hostctl, task) == "error"  # the end is recorded
    assert len(holds(home)) == 1 and pending(home) == holds(home)  # held, not due
    once(home)
    wait_for(lambda: receiver.got and not senders(home), 30, "the notice")
    exactly_once(receiver.docs(), [task])
    [doc] = receiver.docs()
    assert (doc["outcome"], doc["task"]["status"]) == ("error", "error")
    assert doc["delivery"] == delivery_id(task, 1, "webhook", "panel")
    once(home)  # nothing left to send: never again
    assert len(receiver.got) == 1 and pending(home) == []


@pytest.mark.parametrize(("backend", "sweeper_dies"), [("spool", False), ("spool", True),
                                                       ("cluster", False),
                                                       ("cluster", True)])
def test_a_worker_killed_mid_task_the_loss_its_sweep_records_is_told_once(
        run_hostctl: Any, home: Path, receiver: Receiver, procs: Procs,
        request: pytest.FixtureRequest, backend: str, sweeper_dies: bool) -> None:
    config: dict[str, Any] = {
        "queues": {"cron": {"enabled": False}},
        # the loss queues the task again, an hour from now: no runner here runs it
        "worker": {"backoff_base": 3600, "backoff_max": 3600},
        "tasks": {"slow": {"command": ["sleep", "120"], "context_types": ["site"]}},
        "notify": {"webhooks": {"panel": {"url": receiver.url, "outcomes": ["lost"]}}}}
    if backend == "cluster":
        config["cluster"] = {"dsn": new_database(request.getfixturevalue("pg_server"),
                                                 "notify", init=True)}
    write_config(home, config)
    save_sites(run_hostctl, home, ["a.example"])
    task = add_task(run_hostctl, "slow", "@a.example")
    kill_mid_task(run_hostctl, procs, task)
    if sweeper_dies:  # the next runner's sweep records the loss, and is killed there
        # (in a cluster, once the database has seen the dead worker's connection end)
        wait_for(lambda: killed_with(home, procs, "wait-queue", "--once",
                                     HOSTCTL_TEST_DIE_AFTER_END="1"), 60, "a sweep killed")
        assert task_json(run_hostctl, task)["attempts"][0]["outcome"] == "lost"
        assert len(holds(home)) == 1 and receiver.got == []

    def told() -> bool:
        once(home)  # in a cluster the database may see the dead worker's end a bit late
        return bool(receiver.got)

    wait_for(told, 60, "the notice of the loss")
    wait_for(lambda: not senders(home), 30, "the sender to end")
    exactly_once(receiver.docs(), [task])
    [doc] = receiver.docs()
    assert (doc["outcome"], doc["task"]["status"]) == ("lost", "queued")
    assert doc["task"]["attempts"][0]["outcome"] == "lost"
    assert doc["delivery"] == delivery_id(task, 1, "webhook", "panel")
    once(home)
    assert len(receiver.got) == 1 and pending(home) == []


def notices_of_cancels(home: Path, url: str, dsn: str | None = None) -> None:
    config: dict[str, Any] = {
        "queues": {"cron": {"enabled": False}},
        "tasks": {"ok": {"command": ["true"], "context_types": ["site"]}},
        "notify": {"webhooks": {"panel": {"url": url, "outcomes": ["cancelled"]}}}}
    if dsn is not None:
        config["cluster"] = {"dsn": dsn}
    write_config(home, config)


@pytest.mark.parametrize("backend", ["spool", "cluster"])
def test_a_task_cancelled_before_it_started_is_told_once_in_each_of_its_lives(
        run_hostctl: Any, home: Path, receiver: Receiver, request: pytest.FixtureRequest,
        backend: str) -> None:
    """A cancel ends a queued task as surely as an attempt's end: a notice that wants
    ``cancelled`` hears of it, once; queued again by hand and cancelled again, it hears
    of that too, as another delivery."""
    notices_of_cancels(home, receiver.url, None if backend == "spool" else new_database(
        request.getfixturevalue("pg_server"), "notify", init=True))
    save_sites(run_hostctl, home, ["a.example"])
    task = add_task(run_hostctl, "ok", "@a.example")
    res = run_hostctl("task", "cancel", task)
    assert res.code == 0, res
    wait_for(lambda: len(receiver.got) == 1 and not senders(home), 30, "the notice")
    [doc] = receiver.docs()
    assert (doc["outcome"], doc["task"]["id"], doc["task"]["status"]) == \
        ("cancelled", task, "cancelled")
    assert doc["task"]["attempts"] == []
    assert doc["delivery"] == delivery_id(task, "cancel.0", "webhook", "panel")
    assert run_hostctl("task", "retry", task).code == 0
    assert run_hostctl("task", "cancel", task).code == 0
    wait_for(lambda: len(receiver.got) == 2 and not senders(home), 30, "the second notice")
    assert receiver.docs()[1]["delivery"] == delivery_id(task, "cancel.1", "webhook", "panel")
    once(home)  # nothing left: never again
    assert len(receiver.got) == 2 and pending(home) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(OUTCOMES), max_size=3), st.booleans(),
                          st.booleans()), min_size=1, max_size=4),
       st.integers(0, 4))
def test_which_life_of_a_task_ended_in_a_cancel_before_it_started(
        lives: list[tuple[list[str], bool, bool]], asked: int) -> None:
    """A task's history as any runner writes it: lives (each after a ``task retry``) of
    attempts (spawn, start, end), some with a cancel requested as they ran, each life
    ended or not by a cancel before its next start. Whether a life ended so is told
    from the events alone, whatever came before and after it."""
    from hostctl.queues.model import Envelope, Task

    events: list[dict[str, Any]] = []
    expected = []
    for i, (outcomes, cancel_requested, cancelled_queued_at_end) in enumerate(lives):
        if i:
            events.append({"event": "retry"})
        for n, outcome in enumerate(outcomes, 1):
            events += [{"event": "spawn", "attempt": n}, {"event": "start", "attempt": n}]
            if cancel_requested:
                events.append({"event": "cancel"})
            events.append({"event": "end", "outcome": outcome})
        if cancelled_queued_at_end:
            events += [{"event": "cancel"}, {"event": "end", "outcome": "cancelled"}]
        expected.append(cancelled_queued_at_end)
    task = Task(Envelope("t1", "ok", "@a.example", {}, {}, 5, "2026-01-01T00:00:00Z"),
                tuple(events), "done")
    assert cancelled_queued(task, asked) == (asked < len(lives) and expected[asked])


def test_a_cancel_killed_once_it_is_recorded_leaves_its_notice_to_the_next_runner(
        run_hostctl: Any, home: Path, receiver: Receiver, procs: Procs) -> None:
    notices_of_cancels(home, receiver.url)
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    task = add_task(run_hostctl, "ok", "@a.example")
    assert killed_with(home, procs, "task", "cancel", task, HOSTCTL_TEST_DIE_AFTER_END="1")
    assert status_of(run_hostctl, task) == "cancelled"  # recorded, not yet told
    assert len(holds(home)) == 1 and pending(home) == holds(home)
    once(home)
    wait_for(lambda: receiver.got and not senders(home), 30, "the notice")
    exactly_once(receiver.docs(), [task])
    assert receiver.docs()[0]["outcome"] == "cancelled"
    # a hold whose cancel was never recorded (its maker killed before) is dropped
    other = add_task(run_hostctl, "ok", "@b.example")
    assert killed_with(home, procs, "task", "cancel", other,
                       HOSTCTL_TEST_DIE_BEFORE_CANCEL="1")
    assert status_of(run_hostctl, other) == "queued" and len(holds(home)) == 1
    assert run_hostctl("queue", "pause").code == 0  # a sweep, nothing run
    assert holds(home) == [] and len(receiver.got) == 1


# -- what a review of the sender found --------------------------------------------------

def sender_run(home: Path) -> subprocess.CompletedProcess[str]:
    """``hostctl notify-send`` for ``home``, as a runner starts it."""
    return subprocess.run([hostctl_exe(), "--home", str(home), SENDER_COMMAND],
                          capture_output=True, text=True, timeout=60)


def test_an_answer_that_trickles_in_is_cut_off_at_the_hooks_timeout(
        run_hostctl: Any, home: Path, procs: Procs) -> None:
    slow = Receiver(trickle=0.5)  # 19 s for the whole answer, each byte within 1 s
    try:
        configure(home, slow.url, timeout=1)
        save_sites(run_hostctl, home, ["a.example"])
        add_task(run_hostctl, "fail", "@a.example")
        runner = procs.start("wait-queue", "--once")
        wait_for(lambda: slow.arrived, 60, "the request")
        came = time.monotonic()
        wait_for(lambda: [n for n in pending(home) if n.endswith(".1.json")],
                 1 + REQUEST_MARGIN + 5, "the try to end, as a failed one")
        assert time.monotonic() - came < 1 + REQUEST_MARGIN + 4
        assert wait_exit(runner, 30, "the runner") == 0
        assert "no answer within 3 s" in hostctl_log(home)
    finally:
        slow.close()


def test_a_broken_config_toml_starts_no_sender_until_it_is_fixed(
        run_hostctl: Any, home: Path, procs: Procs) -> None:
    hold = threading.Event()
    held = Receiver(hold=hold)
    try:
        configure(home, held.url)
        good = (home / "config.toml").read_text()
        save_sites(run_hostctl, home, ["a.example"])
        held.answers = [500]  # the first try fails: the next one is due a second later
        add_task(run_hostctl, "fail", "@a.example")
        daemon = procs.start("wait-queue", "--max-runtime", "120")
        wait_for(lambda: held.arrived, 60, "the first try")
        (home / "config.toml").write_text(good + "\n[[[ not TOML\n")
        wait_for(lambda: "config not reloaded" in hostctl_log(home), 15, "the failed reload")
        hold.set()
        waiting = "notices: none is sent until config.toml reads again"
        wait_for(lambda: waiting in hostctl_log(home), 15, "the notices to wait")
        time.sleep(3)  # a storm would start a sender a second, or one every 30 s
        log = hostctl_log(home)
        assert log.count(waiting) == 1, log
        assert "the sender exited with status" not in log and "sender stops" not in log
        assert len(held.arrived) == 1 and [n.rsplit(".", 2)[1] for n in pending(home)] == ["1"]
        (home / "config.toml").write_text(good)
        wait_for(lambda: len(held.got) == 2 and pending(home) == [], 15, "the delivery")
        assert "notices: config.toml reads again" in hostctl_log(home)
        daemon.send_signal(signal.SIGTERM)
        assert wait_exit(daemon, 30, "the daemon") == 0
    finally:
        hold.set()
        held.close()


def test_dispatch_with_its_output_captured_ends_while_its_sender_goes_on(
        run_hostctl: Any, home: Path) -> None:
    hold = threading.Event()
    held = Receiver(hold=hold)  # answers once released: the sender outlives dispatch
    try:
        configure(home, held.url, timeout=60)
        save_sites(run_hostctl, home, ["a.example"])
        add_task(run_hostctl, "fail", "@a.example")
        started = time.monotonic()
        res = subprocess.run([hostctl_exe(), "dispatch"], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "HOSTCTL_HOME": str(home)})
        took = time.monotonic() - started
        assert res.returncode == 0, res.stderr
        assert took < FLUSH_WAIT + 8, took  # not the sender's end: its stderr is not ours
        assert held.arrived and senders(home), "the sender goes on"
        assert "goes on after this runner" in hostctl_log(home)
        hold.set()
        wait_for(lambda: held.got and not senders(home), 30, "the sender to end")
        assert pending(home) == []
    finally:
        hold.set()
        held.close()


def test_a_probe_of_the_sender_lock_does_not_put_a_sender_off(tmp_path: Path) -> None:
    hook = Webhook("panel", "http://127.0.0.1:9/hook")
    deliveries = Deliveries(tmp_path / "notify")
    deliveries.add(hook, "error", {"id": "t1"})
    posted: list[str] = []

    def post(_hook: Any, _body: bytes, delivery: str) -> int:
        posted.append(delivery)
        return 200

    sender = Sender(deliveries, Config(webhooks={"panel": hook}), post=post)
    probe = os.open(deliveries.lock_path, os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(probe, fcntl.LOCK_SH)  # what Deliveries.sending() holds for an instant
    threading.Timer(0.005, os.close, (probe,)).start()
    sent = sender.send()
    assert not sent.busy and sent.delivered == 1 and len(posted) == 1


def test_garbage_in_the_folder_is_set_aside_and_the_deliveries_go_out(
        home: Path, receiver: Receiver) -> None:
    configure(home, receiver.url)
    folder = home / "spool" / "notify"
    deliveries = Deliveries(folder)
    good = deliveries.add(Webhook("panel", receiver.url), "error", {"id": "t-good"})
    [line] = [(folder / n).read_text() for n in pending(home)]
    elsewhere = home / "elsewhere.json"
    elsewhere.write_text(line)
    past = time.time() - 60

    def name(n: int) -> str:  # due before the good one: each is looked at first
        return f"{int((past + n) * 1000):013x}.{n:020x}.0.json"

    garbage = {
        name(1): lambda p: p.symlink_to(elsewhere),  # ELOOP
        name(2): lambda p: p.write_text("[1, 2]"),  # a JSON list
        name(3): lambda p: p.mkdir(),  # a folder named like a delivery
        name(4): lambda p: p.write_text("42"),
        name(5): lambda p: p.write_text("[" * 100_000),  # RecursionError
        name(6): lambda p: p.write_text('{"kind": "webhook", "hook": ["panel"]}'),
        name(7): lambda p: os.mkfifo(p),  # opened without O_NONBLOCK: no end
        name(8): lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
    }
    for n, make in garbage.items():
        make(folder / n)
    res = sender_run(home)
    assert res.returncode == 0, res.stderr
    [doc] = receiver.docs()
    assert doc["delivery"] == good and pending(home) == []
    failed = folder / "failed"
    for n in garbage:
        assert os.path.lexists(failed / n), n
        assert (failed / f"{n}.reason").read_text().strip(), n
    assert elsewhere.read_text() == line  # a link is moved, never followed


def test_a_second_term_ends_the_daemons_wait_for_its_sender(
        run_hostctl: Any, home: Path, procs: Procs) -> None:
    hold = threading.Event()
    held = Receiver(hold=hold)
    try:
        configure(home, held.url, timeout=60)
        save_sites(run_hostctl, home, ["a.example"])
        add_task(run_hostctl, "fail", "@a.example")
        daemon = procs.start("wait-queue", "--max-runtime", "120")
        wait_for(lambda: held.arrived, 60, "the request")
        [pid] = senders(home)
        daemon.send_signal(signal.SIGTERM)
        wait_for(lambda: "waiting for the sender's delivery in flight" in hostctl_log(home),
                 10, "the daemon to wait")
        time.sleep(0.3)
        daemon.send_signal(signal.SIGTERM)
        assert wait_exit(daemon, 5, "the daemon, at the second TERM") == 0
        assert "the sender finishes its delivery alone" in hostctl_log(home)
        assert senders(home) == [pid]
        hold.set()
        wait_for(lambda: held.got and not senders(home), 30, "the sender to end alone")
        assert len(held.arrived) == 1 and pending(home) == []
    finally:
        hold.set()
        held.close()


def test_a_sender_that_finds_every_delivery_held_exits_75_and_the_daemon_waits(
        home: Path, receiver: Receiver, procs: Procs) -> None:
    configure(home, receiver.url)
    folder = home / "spool" / "notify"
    Deliveries(folder).add(Webhook("panel", receiver.url), "error", {"id": "t1"})
    [name] = pending(home)
    held = os.open(folder / name, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process sends it (an older sender)
        res = sender_run(home)
        assert res.returncode == ExitStatus.TEMPFAIL == 75, res.stderr
        daemon = procs.start("wait-queue", "--max-runtime", "120")
        said = "notices: every delivery due is held by another process"
        wait_for(lambda: hostctl_log(home).count(said) == 2, 30, "the daemon's sender")
        time.sleep(3)  # a sender a second, were it not for the daemon's wait
        log = hostctl_log(home)
        assert log.count(said) == 2 and "the sender exited with status" not in log, log
        daemon.send_signal(signal.SIGTERM)
        assert wait_exit(daemon, 30, "the daemon") == 0
    finally:
        os.close(held)
    assert receiver.got == [] and pending(home) == [name]


# -- what a review of the holds found -----------------------------------------------------

def test_garbage_holds_and_names_stop_no_runner_and_no_notice(
        run_hostctl: Any, home: Path, receiver: Receiver) -> None:
    """Anything under a hold's name that cannot be one (a FIFO, a folder, nesting past
    the parser's depth, an intent without its line's end) is set aside by the runners'
    sweep, which neither hangs on it nor dies of it; a name that would sort before every
    delivery and read as due in years holds none back."""
    configure(home, receiver.url)
    save_sites(run_hostctl, home, ["a.example"])
    folder = home / "spool" / "notify"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    task = add_task(run_hostctl, "fail", "@a.example")
    intent = json.dumps({"task": task, "attempt": 1, "outcome": "error", "kind": "webhook",
                         "hook": "panel"})
    garbage = {
        f"hold.{'f' * 20}.json": lambda p: os.mkfifo(p),
        f"hold.{'e' * 20}.json": lambda p: p.mkdir(),
        f"hold.{'d' * 20}.json": lambda p: p.write_text("[" * 100_000),
        f"hold.{'c' * 20}.json": lambda p: p.write_text(intent),  # no end to its line
    }
    for n, make in garbage.items():
        make(folder / n)
    (folder / "001FFFFFFFFFF.junk.0.json").write_text("{}")  # sorts first; year 2039
    (folder / "0010000000000000.x.0.json").write_text("{}")
    res = subprocess.run([hostctl_exe(), "wait-queue", "--once"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "HOSTCTL_HOME": str(home)})
    assert res.returncode == 0, res.stderr  # it ran the task: neither hung nor died
    wait_for(lambda: receiver.got and not senders(home), 30, "the task's notice")
    exactly_once(receiver.docs(), [task])
    failed = folder / "failed"
    for n in garbage:
        assert os.path.lexists(failed / n) and not os.path.lexists(folder / n), n
    once(home)  # again: nothing more, nothing stuck
    assert len(receiver.got) == 1


def test_a_hold_whose_task_one_look_misses_is_kept_until_it_stays_missing(
        home: Path) -> None:
    """A task moving between the spool's folders may be missed by one look; its hold is
    dropped only once the task has stayed missing for GONE_AFTER seconds."""
    from hostctl.errors import NotFound
    from hostctl.runners import notify

    folder = home / "spool" / "notify"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = Config(webhooks={"panel": Webhook("panel", "http://127.0.0.1:9/")})
    path = folder / f"hold.{'a' * 20}.json"
    path.write_text(json.dumps({"task": "0" * 20, "attempt": 1, "outcome": "error",
                                "kind": "webhook", "hook": "panel"}) + "\n")

    def missing(task_id: str) -> Any:
        raise NotFound(f"no task {task_id}")

    notices = notify.Notices(Deliveries(folder), lambda: config, missing)
    assert notices.recover() == 0 and path.exists()  # just missed: kept
    old = time.time() - notify.GONE_AFTER - 1
    os.utime(path, (old, old))
    assert notices.recover() == 0 and not path.exists()  # missing for long: dropped


def test_a_foreground_run_that_finds_a_dead_workers_task_recovers_it_by_its_rules(
        run_hostctl: Any, home: Path, receiver: Receiver, procs: Procs) -> None:
    """provision-TYPE on a context whose task a worker killed -9 was running recovers
    that task before any sweep: by its type's rules (a type that is not run again after a
    loss is not queued again), and with the notice of its loss."""
    write_config(home, {
        "queues": {"cron": {"enabled": False}},
        "tasks": {"slow": {"command": ["sleep", "120"], "context_types": ["site"],
                           "rerun_on_loss": False},
                  "quick": {"command": ["true"], "context_types": ["site"]}},
        "notify": {"webhooks": {"panel": {"url": receiver.url, "outcomes": ["lost"]}}}})
    save_sites(run_hostctl, home, ["a.example"])
    task = add_task(run_hostctl, "slow", "@a.example")
    kill_mid_task(run_hostctl, procs, task)
    res = run_hostctl("provision-quick", "@a.example")
    assert res.code == 0, res.err
    doc = task_json(run_hostctl, task)
    # ended, not queued again: a slow that was cut off must be checked by a person
    assert doc["status"] == "error" and doc["attempts"][0]["outcome"] == "lost", doc
    assert "checked by a person" in doc["reason"], doc
    once(home)
    wait_for(lambda: receiver.got and not senders(home), 30, "the notice of the loss")
    exactly_once(receiver.docs(), [task])
    assert receiver.docs()[0]["outcome"] == "lost"


# -- config.toml caught halfway through an editor's write ---------------------------------

def test_a_notice_missing_from_a_config_toml_just_written_is_not_given_up(
        run_hostctl: Any, home: Path, receiver: Receiver) -> None:
    """A sender, and a runner's look at a dead maker's hold, that find no notice of a
    delivery's name in the config in hand read config.toml again once it has settled:
    until then the delivery waits, the hold stays; the notice found again is sent; gone
    for good, the delivery is set aside and the hold dropped, as before."""
    from hostctl.config import SETTLE
    from hostctl.paths import Paths
    from hostctl.runners import notify
    from hostctl.runners.lifecycle import Home as OpsHome

    configure(home, receiver.url)
    good = (home / "config.toml").read_text()
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    receiver.answers = [500]  # its first try fails: the delivery is due again later
    first = add_task(run_hostctl, "fail", "@a.example")
    once(home)
    wait_for(lambda: receiver.got and not senders(home), 30, "the first try")
    [due] = pending(home)
    folder = home / "spool" / "notify"
    _when, delivery, tries = notify._parse(due)  # type: ignore[misc]
    os.rename(folder / due, folder / notify._name(time.time() - 1, delivery, tries))
    with written_in_place(home / "config.toml", good, 2 * SETTLE):
        ran = sender_run(home)  # started while config.toml is empty
    assert ran.returncode == 0, ran
    assert not (folder / "failed").exists(), os.listdir(folder / "failed")
    assert pending(home) == [] and len(receiver.got) == 2
    assert receiver.docs()[1]["task"]["id"] == first

    # a hold its maker left (killed once the end was recorded), looked at while
    # config.toml is being written: kept; then found with the notice: due and sent
    second = add_task(run_hostctl, "fail", "@b.example")
    h = OpsHome(Paths(home))
    assert run_hostctl("dispatch").code == 0
    wait_for(lambda: len(receiver.got) == 3 and not senders(home), 30, "its own notice")
    hold = folder / f"hold.{'b' * 20}.json"
    hold.write_text(json.dumps({"task": second, "attempt": 1, "outcome": "error",
                                "kind": "webhook", "hook": "panel"}) + "\n")
    sent_before = len(receiver.got)
    empty = Config()
    notices = notify.Notices(Deliveries(folder), lambda: empty, h.queue.get,
                             config_file=h.paths.config_file)
    (home / "config.toml").write_text("")
    assert notices.recover() == 0 and hold.exists()
    (home / "config.toml").write_text(good)
    time.sleep(SETTLE + 0.2)
    assert notices.recover() == 1 and not hold.exists()
    wait_for(lambda: sender_run(home).returncode == 0
             and len(receiver.got) > sent_before, 30, "the held notice")

    # gone for good (config.toml settled without it): the hold dropped, the delivery
    # set aside
    hold.write_text(json.dumps({"task": second, "attempt": 1, "outcome": "error",
                                "kind": "webhook", "hook": "panel"}) + "\n")
    write_config(home, {"queues": {"cron": {"enabled": False}}})
    time.sleep(SETTLE + 0.2)
    assert notices.recover() == 0 and not hold.exists()
    d = Deliveries(folder)
    d.add(Webhook("panel", receiver.url), "error", {"id": second})
    ran = sender_run(home)
    assert ran.returncode == 0, ran
    assert pending(home) == [] and len(os.listdir(folder / "failed")) == 2  # (+ reason)
