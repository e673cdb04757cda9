"""``hostctl serve``: ``/metrics`` and a read-only status page, over HTTP.

Read-only: GET and HEAD alone; nothing here changes the queue or a context. Bound to
loopback unless told otherwise, or to a UNIX socket (mode 0660: this user and its
group); on any other address every request must carry the token (``Authorization:
Bearer TOKEN``, or HTTP Basic with the token as the password, which a browser asks for
itself). A request whose
``Host`` is not this server's own name is refused, so that a web page elsewhere cannot
read it through a DNS name made to point at loopback.

Pages (server-rendered; one small script, ``/app.js``, keeps the live parts current):

    /                      the queue: counts, running tasks, recent failures, recent
                           tasks (?context=@NAME: that context's history), workers
    /tasks/ID              one task: its attempts, result and log, followed live
    /metrics               runners/metrics.py, for Prometheus
    /api/status            what / shows, as JSON (the script reads it each second)
    /api/tasks/ID          the task as ``task show --json`` gives it
    /api/tasks/ID/log      its log from ``?offset=N`` (bytes), at most 256 KiB a call
"""

from __future__ import annotations

import base64
import hmac
import html
import json
import logging
import os
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hostctl.contexts.names import display, parse_name
from hostctl.errors import HostctlError, InvalidInput, NotFound
from hostctl.paths import Paths
from hostctl.queues.model import Status, TaskQuery, valid_id
from hostctl.runners import metrics
from hostctl.runners.home import Home

log = logging.getLogger("hostctl")

DEFAULT_LISTEN = "127.0.0.1:8470"
LOG_CHUNK = 256 * 1024
_HOSTPORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})")


@dataclass(frozen=True)
class Listen:
    """Where to listen: a TCP address, or a UNIX socket's path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def loopback(self) -> bool:
        return not self.path and (self.host == "localhost" or
                                  ip_address(self.host).is_loopback)

    @property
    def needs_token(self) -> bool:
        """Anything but loopback or a UNIX socket (whose mode, 0660, lets in this user
        and its group alone) is served with a token only."""
        return not self.path and not self.loopback

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH`` (InvalidInput otherwise)."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/") or "\0" in path:
            raise InvalidInput(f"--listen unix:PATH takes an absolute path, not {path!r}")
        return Listen(path=path)
    found = _HOSTPORT.fullmatch(text)
    if not found or not 0 <= int(found["port"]) < 65536:
        raise InvalidInput(f"--listen takes HOST:PORT, [V6]:PORT or unix:PATH, not {text!r}")
    host = found["v6"] or found["host"]
    if host != "localhost":
        try:
            ip_address(host)
        except ValueError:
            raise InvalidInput(f"--listen takes an IP address (or localhost), not {host!r}: "
                               "a name could resolve anywhere") from None
    return Listen(host, int(found["port"]))


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TcpServer(ThreadingHTTPServer):
    daemon_threads = True


class _TcpServer6(_TcpServer):
    address_family = socket.AF_INET6


class StatusServer:
    """The server: ``serve_forever`` until ``shutdown`` (another thread, a signal)."""

    def __init__(self, paths: Paths, listen: Listen, token: str = "") -> None:
        if listen.needs_token and not token:
            raise InvalidInput(f"serving on {listen} needs a token (--token-file, or "
                               "HOSTCTL_SERVE_TOKEN): only loopback and a UNIX socket are served "
                               "without one")
        self.paths, self.listen, self.token = paths, listen, token
        handler = _handler(self)
        server: socketserver.BaseServer
        if listen.path:
            with suppress(FileNotFoundError):  # a socket left by a server before
                os.unlink(listen.path)
            mask = os.umask(0o117)  # 0660 from its first moment
            try:
                server = _UnixServer(listen.path, handler)
            finally:
                os.umask(mask)
        else:
            kind = _TcpServer6 if ":" in listen.host else _TcpServer
            server = kind((listen.host, listen.port), handler)
        self.server = server

    @property
    def address(self) -> str:
        if self.listen.path:
            return f"unix:{self.listen.path}"
        host, port = self._bound()
        return str(Listen(host, port))

    def _bound(self) -> tuple[str, int]:
        """The TCP address bound (its port, when 0 was asked for)."""
        bound: Any = self.server.server_address
        return str(bound[0]), int(bound[1])

    def hosts(self) -> set[str]:
        """The Host header values this server answers to (empty: any)."""
        if self.listen.path or self.token:
            # a socket: only who can open it reaches it; a token: a page elsewhere
            # cannot have it sent, whatever name it points here
            return set()
        port = self._bound()[1]
        names = {self.listen.host, "localhost"} | (
            {"127.0.0.1", "[::1]"} if self.listen.loopback else set())
        shown = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
        return shown | {f"{n}:{port}" for n in shown}

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.5)

    def shutdown(self) -> None:
        threading.Thread(target=self.server.shutdown, daemon=True).start()

    def close(self) -> None:
        self.server.server_close()
        if self.listen.path:
            with suppress(FileNotFoundError):
                os.unlink(self.listen.path)


# -- what the pages read ----------------------------------------------------------------

def status_doc(home: Home, context: str | None = None) -> dict[str, Any]:
    """What the status page shows, as plain data."""
    queue = home.queue
    counts = queue.counts()
    recent = queue.recent(TaskQuery(context=context, limit=50))
    failures = queue.recent(TaskQuery(statuses=frozenset([Status.ERROR]), context=context,
                                      limit=20))
    running = queue.recent(TaskQuery(statuses=frozenset([Status.PROCESSING]), limit=100))

    def brief(t: Any) -> dict[str, Any]:
        d = t.to_json()
        return {k: d.get(k) for k in ("id", "type", "context", "status", "created",
                                      "started", "finished", "reason")}

    return {
        "paused": queue.paused(),
        "counts": {"queued": counts.queued, "deferred": counts.deferred,
                   "running": counts.processing, "finished": counts.finished,
                   "incoming": counts.incoming, "quarantined": counts.quarantined,
                   "rejected": counts.rejected},
        "context": context,
        "running": [brief(t) for t in running],
        "failures": [brief(t) for t in failures],
        "recent": [brief(t) for t in recent],
        "workers": [w.to_json() for w in queue.workers()],
    }


def read_log_from(home: Home, task_id: str, offset: int) -> tuple[bytes, bool]:
    """Up to LOG_CHUNK bytes of the task's log from ``offset``, and whether it ended."""
    task = home.queue.get(task_id)
    data = b"".join(home.queue.read_log(task_id, False))
    return data[offset:offset + LOG_CHUNK], task.status.finished


# -- HTML ------------------------------------------------------------------------------

_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.2em .8em;text-align:left;
border-bottom:1px solid #ddd}th{background:#f4f4f4}.error{color:#b00}.success{color:#070}
.processing{color:#05a}pre{background:#111;color:#eee;padding:1em;overflow:auto;
max-height:70vh}.paused{background:#fd6;padding:.3em .6em}"""


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}<script src=\"/app.js\"></script></body></html>").encode()


def _cell(value: Any, cls: str = "") -> str:
    text = "" if value is None else str(value)
    attr = f' class="{html.escape(cls)}"' if cls else ""
    return f"<td{attr}>{html.escape(text)}</td>"


def _task_rows(tasks: list[Mapping[str, Any]]) -> str:
    rows = []
    for t in tasks:
        tid = html.escape(str(t["id"]))
        ctx = html.escape(str(t.get("context") or ""))
        rows.append(f'<tr data-id="{tid}"><td><a href="/tasks/{tid}">{tid}</a></td>'
                    + _cell(t.get("type")) + f'<td><a href="/?context={ctx}">{ctx}</a></td>'
                    + _cell(t.get("status"), str(t.get("status"))) + _cell(t.get("created"))
                    + _cell(t.get("reason")) + "</tr>")
    return ("<table><tr><th>ID</th><th>TYPE</th><th>CONTEXT</th><th>STATUS</th>"
            "<th>CREATED</th><th>REASON</th></tr>" + "".join(rows) + "</table>")


def status_page(doc: Mapping[str, Any]) -> bytes:
    counts = doc["counts"]
    title = f"hostctl: {doc['context']}" if doc["context"] else "hostctl"
    workers = "".join(
        "<tr>" + _cell(w["host"]) + _cell(w["pid"]) + _cell("alive" if w["alive"] else "dead")
        + _cell(w["last_seen"]) + _cell(w["tasks_run"]) + "</tr>" for w in doc["workers"])
    body = (
        f"<h1>{html.escape(title)}</h1>"
        + ('<p class="paused" id="paused">the queue is paused</p>' if doc["paused"] else
           '<p id="paused" hidden></p>')
        + '<table id="counts"><tr>' + "".join(f"<th>{html.escape(k)}</th>" for k in counts)
        + "</tr><tr>" + "".join(_cell(v) for v in counts.values()) + "</tr></table>"
        + f'<h2>Running</h2><div id="running">{_task_rows(doc["running"])}</div>'
        + f'<h2>Recent failures</h2><div id="failures">{_task_rows(doc["failures"])}</div>'
        + f'<h2>Recent tasks</h2><div id="recent">{_task_rows(doc["recent"])}</div>'
        + "<h2>Workers</h2><table id=workers><tr><th>HOST</th><th>PID</th><th>STATE</th>"
        + f"<th>LAST SEEN</th><th>TASKS RUN</th></tr>{workers}</table>")
    return _page(title, f'<main data-page="status">{body}</main>')


def task_page(doc: Mapping[str, Any]) -> bytes:
    tid = str(doc["id"])
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th>" + _cell(doc.get(k), str(doc.get(k)) if k == "status"
                                                   else "") + "</tr>"
        for k in ("type", "context", "status", "created", "started", "finished", "reason"))
    attempts = "".join(
        "<tr>" + _cell(a["attempt"]) + _cell(a["started"]) + _cell(a["finished"])
        + _cell(a["outcome"]) + _cell(a["reason"]) + "</tr>" for a in doc.get("attempts") or [])
    result = html.escape(json.dumps(doc.get("result") or {}, indent=2, ensure_ascii=False))
    body = (f'<p><a href="/">all tasks</a></p><h1>task {html.escape(tid)}</h1>'
            f'<table id="task">{rows}</table><h2>Attempts</h2><table><tr><th>#</th>'
            f"<th>STARTED</th><th>FINISHED</th><th>OUTCOME</th><th>REASON</th></tr>"
            f"{attempts}</table><h2>Result</h2><pre>{result}</pre><h2>Log</h2>"
            f'<pre id="log"></pre>')
    return _page(f"hostctl: task {tid}",
                 f'<main data-page="task" data-id="{html.escape(tid)}">{body}</main>')


#: the page's one script: the status page's tables and a task's log, kept current
APP_JS = r"""(function () {
  "use strict";
  var main = document.querySelector("main");
  function get(url) {
    return fetch(url, {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (!r.ok) { throw new Error(url + ": " + r.status); }
      return r;
    });
  }
  function cell(row, text, cls) {
    var td = row.insertCell();
    td.textContent = text == null ? "" : String(text);
    if (cls) { td.className = cls; }
    return td;
  }
  function link(td, href, text) {
    td.textContent = "";
    var a = document.createElement("a");
    a.href = href; a.textContent = text;
    td.appendChild(a);
  }
  function tasks(id, list) {
    var table = document.createElement("table");
    var head = table.insertRow();
    ["ID", "TYPE", "CONTEXT", "STATUS", "CREATED", "REASON"].forEach(function (h) {
      var th = document.createElement("th"); th.textContent = h; head.appendChild(th);
    });
    list.forEach(function (t) {
      var row = table.insertRow();
      row.dataset.id = t.id;
      link(cell(row, ""), "/tasks/" + encodeURIComponent(t.id), t.id);
      cell(row, t.type);
      link(cell(row, ""), "/?context=" + encodeURIComponent(t.context || ""), t.context || "");
      cell(row, t.status, t.status);
      cell(row, t.created);
      cell(row, t.reason);
    });
    var box = document.getElementById(id);
    box.replaceChildren(table);
  }
  function status() {
    var ctx = new URLSearchParams(location.search).get("context");
    get("/api/status" + (ctx ? "?context=" + encodeURIComponent(ctx) : ""))
      .then(function (r) { return r.json(); })
      .then(function (doc) {
        var counts = document.getElementById("counts");
        var row = counts.rows[1];
        Object.keys(doc.counts).forEach(function (k, i) {
          if (row.cells[i]) { row.cells[i].textContent = doc.counts[k]; }
        });
        var paused = document.getElementById("paused");
        paused.hidden = !doc.paused;
        paused.className = doc.paused ? "paused" : "";
        paused.textContent = doc.paused ? "the queue is paused" : "";
        tasks("running", doc.running);
        tasks("failures", doc.failures);
        tasks("recent", doc.recent);
        document.body.dataset.updated = String(Date.now());
      })
      .catch(function (e) { document.body.dataset.error = String(e); })
      .then(function () { setTimeout(status, 1000); });
  }
  function follow(id, offset) {
    get("/api/tasks/" + encodeURIComponent(id) + "/log?offset=" + offset)
      .then(function (r) {
        var ended = r.headers.get("X-Hostctl-Ended") === "1";
        return r.arrayBuffer().then(function (buf) {
          var text = new TextDecoder().decode(buf);
          document.getElementById("log").textContent += text;
          offset += buf.byteLength;
          if (ended && buf.byteLength === 0) {
            document.body.dataset.ended = "1";
            return get("/api/tasks/" + encodeURIComponent(id)).then(function (r) {
              return r.json();
            }).then(function (doc) {
              var cells = document.querySelectorAll("#task td");
              ["type", "context", "status", "created", "started", "finished", "reason"]
                .forEach(function (k, i) {
                  cells[i].textContent = doc[k] == null ? "" : String(doc[k]);
                  if (k === "status") { cells[i].className = doc[k]; }
                });
            });
          }
          setTimeout(function () { follow(id, offset); }, buf.byteLength ? 0 : 500);
        });
      })
      .catch(function (e) { document.body.dataset.error = String(e); });
  }
  if (main.dataset.page === "status") { setTimeout(status, 1000); }
  if (main.dataset.page === "task") { follow(main.dataset.id, 0); }
})();
"""

_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                               "style-src 'unsafe-inline'; img-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


def _handler(owner: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "hostctl"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - its name
            log.debug("serve: %s %s", self.address_string(), format % args)

        def address_string(self) -> str:
            return str(self.client_address[0]) if self.client_address else "unix"

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
            self._answer(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(head=False)

        def _refuse_method(self) -> None:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD only\n",
                       "text/plain; charset=utf-8", head=False, extra={"Allow": "GET, HEAD"})

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method  # noqa: N815

        def _answer(self, head: bool) -> None:
            host = self.headers.get("Host", "")
            allowed = owner.hosts()
            if allowed and host.lower() not in allowed:
                self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host\n",
                           "text/plain; charset=utf-8", head)
                return
            if owner.token and not self._authorized():
                self._send(HTTPStatus.UNAUTHORIZED, b"a token is needed\n",
                           "text/plain; charset=utf-8", head,
                           extra={"WWW-Authenticate": 'Basic realm="hostctl", charset="UTF-8"'})
                return
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            try:
                status, body, ctype, extra = _route(owner.paths, url.path, query)
            except NotFound as exc:
                status, body, ctype, extra = (HTTPStatus.NOT_FOUND, (exc.message + "\n").encode(),
                                              "text/plain; charset=utf-8", {})
            except InvalidInput as exc:
                status, body, ctype, extra = (HTTPStatus.BAD_REQUEST,
                                              (exc.message + "\n").encode(),
                                              "text/plain; charset=utf-8", {})
            except HostctlError as exc:
                status, body, ctype, extra = (HTTPStatus.SERVICE_UNAVAILABLE,
                                              (exc.message + "\n").encode(),
                                              "text/plain; charset=utf-8", {})
            self._send(status, body, ctype, head, extra)

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() == "bearer":
                token = value.strip()
            elif scheme.lower() == "basic":
                try:
                    token = base64.b64decode(value.strip(), validate=True).decode().partition(
                        ":")[2]
                except (ValueError, UnicodeDecodeError):
                    return False
            else:
                return False
            return hmac.compare_digest(token.encode(), owner.token.encode())

        def _send(self, status: int, body: bytes, ctype: str, head: bool,
                  extra: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in {**_HEADERS, **(extra or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


_Answer = tuple[int, bytes, str, dict[str, str]]
_HTML = "text/html; charset=utf-8"
_JSON = "application/json"


def _route(paths: Paths, path: str, query: Mapping[str, list[str]]) -> _Answer:
    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    def context() -> str | None:
        raw = one("context")
        return display(parse_name(raw)) if raw else None

    routes: dict[str, Callable[[], _Answer]] = {
        "/": lambda: (HTTPStatus.OK, status_page(status_doc(Home(paths), context())), _HTML, {}),
        "/app.js": lambda: (HTTPStatus.OK, APP_JS.encode(), "text/javascript; charset=utf-8",
                            {}),
        "/metrics": lambda: (HTTPStatus.OK, metrics.render(metrics.collect(Home(paths)))
                             .encode(), metrics.CONTENT_TYPE, {}),
        "/api/status": lambda: (HTTPStatus.OK,
                                json.dumps(status_doc(Home(paths), context())).encode(),
                                _JSON, {}),
    }
    if path in routes:
        return routes[path]()
    found = re.fullmatch(r"/(api/)?tasks/([^/]+)(/log)?", path)
    if not found or not valid_id(found[2]) or (found[3] and not found[1]):
        raise NotFound(f"nothing at {path}")
    home, task_id = Home(paths), found[2]
    if found[3]:
        raw = one("offset") or "0"
        if not raw.isdigit():
            raise InvalidInput("offset takes a number of bytes")
        data, ended = read_log_from(home, task_id, int(raw))
        return (HTTPStatus.OK, data, "text/plain; charset=utf-8",
                {"X-Hostctl-Ended": "1" if ended else "0"})
    doc = home.queue.get(task_id).to_json()
    doc.pop("log", None)  # a path on the host: nothing a reader needs
    if found[1]:
        return HTTPStatus.OK, json.dumps(doc).encode(), _JSON, {}
    return HTTPStatus.OK, task_page(doc), _HTML, {}


def read_token(path: Path | None) -> str:
    """The token from ``path`` (its first line; the file must be private) or from
    HOSTCTL_SERVE_TOKEN; "" if neither. A token shorter than 16 characters is refused."""
    if path is None:
        token, where = os.environ.get("HOSTCTL_SERVE_TOKEN", "").strip(), \
            "HOSTCTL_SERVE_TOKEN"
        if not token:
            return ""
    else:
        try:
            if os.stat(path).st_mode & 0o077:
                raise InvalidInput(f"the token file {path} can be read by others: chmod 600 "
                                   "it")
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise InvalidInput(f"cannot read the token file {path}: {exc.strerror}") from None
        token, where = (lines[0].strip() if lines else ""), str(path)
    if len(token) < 16:
        raise InvalidInput(f"the token in {where} is shorter than 16 characters")
    return token
