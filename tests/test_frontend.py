"""The front end's door, seen from a real second UNIX user: submit through the drop box,
follow only what it submitted, read nothing else of the home; the back end admits each
drop strictly (or rejects it, with the reason in the receipt) and never runs what a drop
says as a command line.

The back end (the home's owner) is root here; every front-end command and file access
runs in a forked child that has dropped to a front-end user (see asuser.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asuser import (
    Outcome,
    User,
    Users,
    attempt,
    call_as,
    can_make_users,
    frontend_users,
    hostctl_as,
)
from conftest import hostctl_exe
from taskhelpers import wait_for, write_config

from hostctl.queues.admission import RECEIPT_SCAN_BYTES
from hostctl.queues.model import MAX_TASK_BYTES, new_id

pytestmark = pytest.mark.skipif(bool(can_make_users()), reason=can_make_users() or "ok")

SECRET = "pw-" + secrets.token_hex(8)
# Writes its argv and the HOSTCTL_* environment to the file named by its first argument.
DUMP = ("import json, os, sys; json.dump({'argv': sys.argv[2:], 'env': {k: v for k, v in "
        "os.environ.items() if k.startswith('HOSTCTL_')}}, open(sys.argv[1], 'w')); "
        "print('dumped', len(sys.argv[2]))")
LEAK = "import os; print('pw=' + os.environ['HOSTCTL_FIELD_DB_PASSWD'])"
SITES = ("a.example", "b.example", "c.example")


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    with frontend_users(2) as made:
        yield made


@dataclass
class Backend:
    """A home owned by root with a drop box for the front-end group."""

    users: Users
    home: Path
    www: Path
    mark: Path  # a folder a hostile value would touch or remove, with a canary inside

    @property
    def env(self) -> dict[str, str | None]:
        return {"HOSTCTL_HOME": str(self.home)}

    def run(self, *argv: str) -> Outcome:
        """hostctl as the back end (root), in a child process."""
        return hostctl_as(None, "--home", str(self.home), *argv)

    def ok(self, *argv: str) -> str:
        res = self.run(*argv)
        assert res.code == 0, (argv, res)
        return res.out

    def show(self, task_id: str) -> dict[str, Any]:
        doc = json.loads(self.ok("task", "show", task_id, "--json"))
        assert isinstance(doc, dict)
        return doc

    def fe(self, user: User, *argv: str, timeout: float = 60, **env: str | None) -> Outcome:
        """hostctl as a front-end user, HOSTCTL_HOME pointing at this home."""
        return hostctl_as(user, *argv, env={**self.env, **env}, timeout=timeout)

    def fe_json(self, user: User, *argv: str) -> Any:
        res = self.fe(user, *argv, "--json")
        assert res.code == 0, (argv, res)
        return json.loads(res.out)

    def add(self, user: User, *argv: str) -> str:
        res = self.fe(user, "task", "add", *argv)
        assert res.code == 0 and res.err == "", res
        return res.out.strip()

    def path(self, rel: str) -> Path:
        return self.home / rel

    def dump(self, task_id: str) -> dict[str, Any]:
        doc = json.loads((self.www / f"dump-{task_id}.json").read_text())
        assert isinstance(doc, dict)
        return doc


def make_backend(users: Users, name: str, config: dict[str, Any] | None = None) -> Backend:
    home = users.base / name
    www = users.base / f"{name}-www"
    mark = users.base / f"{name}-mark"
    for folder in (www, mark):
        folder.mkdir(mode=0o700)
    (mark / "canary").write_text("still here\n")
    be = Backend(users, home, www, mark)
    be.ok("frontend", "setup", "--group", users.group)
    write_config(home, {"tasks": {
        "dump": {"command": [sys.executable, "-c", DUMP, "{root}/dump-{task_id}.json",
                             "{option.val}", "--note={option.note}", "{client_name}"],
                 "context_types": ["site"], "options": {"val": "a value", "note": "a note"}},
        "leak": {"command": [sys.executable, "-c", LEAK], "context_types": ["server"]},
    }, **(config or {})})
    os.chmod(home / "config.toml", 0o600)
    be.ok("provision-save", "@srv", "--context_type", "server", "--db_service_type",
          "mysql", "--db_user", "admin", "--db_passwd", SECRET)
    be.ok("provision-save", "@plat", "--context_type", "platform", "--root", str(www),
          "--web_server", "@srv")
    for site in SITES:
        be.ok("provision-save", f"@{site}", "--context_type", "site", "--platform", "@plat",
              "--db_server", "@srv")
    return be


def receipt_of(user: User, task_id: str) -> str:
    return (user.receipts / task_id).read_text().strip()


def one_line_error(res: Outcome) -> None:
    """Exit 2, nothing on stdout, one `hostctl: error:` line on stderr, no traceback."""
    assert res.code == 2, res
    assert res.out == "", res
    assert res.err.startswith("hostctl: error: ") and res.err.count("\n") == 1, res
    assert "Traceback" not in res.err


# -- the layout ------------------------------------------------------------------------

def test_frontend_setup_makes_the_drop_box_layout(users: Users) -> None:
    be = make_backend(users, "home-layout")
    want = {"": 0o710, "spool": 0o710, "spool/incoming": 0o3730, "spool/outbox": 0o2710}
    for rel, mode in want.items():
        st = os.stat(be.path(rel))
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (mode, users.gid), rel
    for rel in ("contexts", "logs", "spool/new", "spool/done", "spool/rejected", "spool/tmp"):
        assert stat.S_IMODE(os.stat(be.path(rel)).st_mode) == 0o700, rel
    assert be.ok("frontend", "setup", "--group", users.group).count("changed") == 0
    res = be.run("frontend", "setup", "--group", users.group + "-none")
    one_line_error(res)


# -- a submission, followed by its submitter and by no one else ---------------------------

HOSTILE_VAL = "$(touch {mark}/pwned-opt) `touch {mark}/pwned-tick`"
HOSTILE_NOTE = "x; rm -rf {mark} && touch {mark}/pwned-note"
HOSTILE_FIELD = "$(rm -rf {mark})|touch {mark}/pwned-field"


@dataclass
class World:
    be: Backend
    fe1: User
    fe2: User
    dump: str  # fe1's task with hostile values
    leak: str  # fe1's task that prints the db server's password
    other: str  # fe2's task
    values: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(users: Users) -> World:
    be = make_backend(users, "home-world")
    fe1, fe2 = users.members
    values = {k: v.format(mark=be.mark) for k, v in
              (("val", HOSTILE_VAL), ("note", HOSTILE_NOTE), ("field", HOSTILE_FIELD))}
    dump = be.add(fe1, "dump", "@a.example", "--option", f"val={values['val']}",
                  "--option", f"note={values['note']}",
                  "--context-option", f"client_name={values['field']}")
    leak = be.add(fe1, "leak", "@srv")
    other = be.add(fe2, "dump", "@b.example", "--option", "val=from the other one")
    be.ok("dispatch")
    return World(be, fe1, fe2, dump, leak, other, values)


def test_task_add_drops_the_task_and_keeps_its_receipt(world: World) -> None:
    be, fe1 = world.be, world.fe1
    book = fe1.receipts / world.dump
    st = os.stat(book)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (fe1.uid, 0o600)
    assert len(receipt_of(fe1, world.dump)) == 32
    assert be.show(world.dump)["status"] == "success"
    assert os.listdir(be.path("spool/incoming")) == []


def test_the_submitter_uid_is_recorded_for_the_back_end(world: World) -> None:
    be = world.be
    assert be.show(world.dump)["submitter"] == world.fe1.uid
    assert be.show(world.leak)["submitter"] == world.fe1.uid
    assert be.show(world.other)["submitter"] == world.fe2.uid


def test_the_front_end_follows_its_own_task(world: World) -> None:
    be, fe1 = world.be, world.fe1
    doc = be.fe_json(fe1, "task", "show", world.dump)
    assert (doc["id"], doc["type"], doc["context"]) == (world.dump, "dump", "@a.example")
    assert (doc["status"], doc["status_code"]) == ("success", 1)
    assert doc["options"] == {"val": world.values["val"], "note": world.values["note"]}
    assert doc["context_options"] == {"client_name": world.values["field"]}
    assert [a["outcome"] for a in doc["attempts"]] == ["success"]
    # what it reads names no home path and no submitter
    assert "submitter" not in doc and "log" not in doc
    assert str(be.home) + os.sep not in json.dumps(doc)
    text = be.fe(fe1, "task", "show", world.dump)
    assert text.code == 0 and "status:    success" in text.out
    listed = be.fe_json(fe1, "task", "list")
    assert sorted(d["id"] for d in listed) == sorted([world.dump, world.leak])
    assert [d["id"] for d in be.fe_json(fe1, "task", "list", "--context", "@srv")] == \
        [world.leak]
    log = be.fe(fe1, "task", "log", world.dump)
    assert log.code == 0, log
    assert f"dumped {len(world.values['val'])}" in log.out
    assert log.out.startswith("--- hostctl: attempt 1 of dump on @a.example")
    assert be.fe(fe1, "task", "log", world.dump, "--follow").out == log.out
    waited = be.fe(fe1, "task", "wait", world.dump)  # by its receipt, as show does
    assert (waited.code, waited.out) == (0, f"task {world.dump}: success\n"), waited


def test_the_receipt_files_are_shared_with_the_group_only(world: World) -> None:
    be = world.be
    token = receipt_of(world.fe1, world.dump)
    for ext in ("json", "log"):
        st = os.stat(be.path(f"spool/outbox/{token}.{ext}"))
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, be.users.gid), ext


def test_values_from_a_drop_are_never_run_as_a_command_line(world: World) -> None:
    be, values = world.be, world.values
    got = be.dump(world.dump)
    assert got["argv"] == [values["val"], f"--note={values['note']}", values["field"]]
    assert got["env"]["HOSTCTL_OPTION_VAL"] == values["val"]
    assert got["env"]["HOSTCTL_OPTION_NOTE"] == values["note"]
    assert got["env"]["HOSTCTL_FIELD_CLIENT_NAME"] == values["field"]
    ctx = json.loads(be.ok("context", "show", "@a.example", "--json"))
    assert json.dumps(values["field"]) in json.dumps(ctx)
    assert sorted(os.listdir(be.mark)) == ["canary"]


def test_another_front_end_cannot_follow_the_task(world: World) -> None:
    be, fe1, fe2 = world.be, world.fe1, world.fe2
    for argv in (("task", "show", world.dump), ("task", "show", world.dump, "--json"),
                 ("task", "log", world.dump)):
        res = be.fe(fe2, *argv)
        one_line_error(res)
        assert "no receipt" in res.err
    own = receipt_of(fe2, world.other)
    res = be.fe(fe2, "task", "show", world.dump, "--receipt", own)
    one_line_error(res)
    assert [d["id"] for d in be.fe_json(fe2, "task", "list")] == [world.other]
    assert be.fe_json(fe2, "task", "show", world.other)["status"] == "success"
    book = str(fe1.receipts)
    assert call_as(fe2, lambda: [attempt(lambda: os.listdir(book)),
                                 attempt(lambda: open(f"{book}/{world.dump}").read())]) == \
        ["PermissionError", "PermissionError"]


def _sweep(dirs: list[str], files: list[str], needle: bytes) -> dict[str, list[str]]:
    """As the current user: what can be listed, what can be read, what holds ``needle``."""
    listable = [d for d in dirs if attempt(lambda d=d: os.listdir(d)) == "ok"]
    readable, holding = [], []
    for path in files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        readable.append(path)
        if needle in data:
            holding.append(path)
    return {"listable": listable, "readable": readable, "holding": holding}


def test_the_front_end_reads_nothing_else_of_the_home(world: World) -> None:
    be = world.be
    dirs, files = [], []
    for top, _subdirs, names in os.walk(be.home):
        dirs.append(top)
        files += [os.path.join(top, n) for n in names]
    assert any(SECRET.encode() in Path(f).read_bytes() for f in files)  # it is there
    outbox = str(be.path("spool/outbox")) + os.sep
    for user in (world.fe1, world.fe2):
        seen = call_as(user, lambda: _sweep(dirs, files, SECRET.encode()))
        assert seen["listable"] == [], user.name
        assert seen["holding"] == [], user.name
        # only receipts, each readable by whoever knows its 128-bit name
        assert seen["readable"] and all(p.startswith(outbox) for p in seen["readable"])
    srv, log = be.path("contexts/srv.toml"), be.path(f"logs/{world.dump}.log")
    task, config = be.path(f"spool/done/{world.dump}.task"), be.path("config.toml")
    token = receipt_of(world.fe1, world.dump)
    got = call_as(world.fe1, lambda: {
        "list home": attempt(lambda: os.listdir(be.home)),
        "list spool": attempt(lambda: os.listdir(be.path("spool"))),
        "list incoming": attempt(lambda: os.listdir(be.path("spool/incoming"))),
        "list outbox": attempt(lambda: os.listdir(be.path("spool/outbox"))),
        "list logs": attempt(lambda: os.listdir(be.path("logs"))),
        "read context": attempt(lambda: srv.read_bytes()),
        "read config": attempt(lambda: config.read_bytes()),
        "read log": attempt(lambda: log.read_bytes()),
        "read task": attempt(lambda: task.read_bytes()),
        "list new": attempt(lambda: os.listdir(be.path("spool/new"))),
        "list rejected": attempt(lambda: os.listdir(be.path("spool/rejected"))),
        "read own receipt": attempt(lambda: be.path(f"spool/outbox/{token}.json").read_bytes()),
    })
    assert got == {k: "ok" if k == "read own receipt" else "PermissionError" for k in got}


REFUSED = [
    ("context", "list"),
    ("context", "show", "@srv", "--show-secrets"),
    ("queue", "status"),
    ("queue", "pause"),
    ("dispatch",),
    ("wait-queue", "--once"),
    ("provision-save", "@a.example", "--language", "fr"),
    ("provision-verify", "@a.example"),
    ("task", "retry", "{id}"),
    ("task", "cancel", "{id}"),
    ("doctor",),
    ("doctor", "--fix"),
    ("frontend", "setup", "--group", "{group}"),
]


@pytest.mark.parametrize("argv", REFUSED, ids=[" ".join(a[:2]) for a in REFUSED])
def test_every_other_command_is_refused_to_the_front_end(world: World,
                                                         argv: tuple[str, ...]) -> None:
    be = world.be
    filled = [a.format(id=world.dump, group=be.users.group) for a in argv]
    res = be.fe(world.fe1, *filled)
    one_line_error(res)
    assert SECRET not in res.err


def test_refused_commands_change_nothing(world: World) -> None:
    be = world.be
    for argv in (("provision-save", "@a.example", "--language", "fr"),
                 ("task", "retry", world.dump), ("queue", "pause")):
        assert be.fe(world.fe1, *argv).code == 2
    ctx = json.loads(be.ok("context", "show", "@a.example", "--json"))
    assert ctx["fields"]["language"] == "en"
    assert be.show(world.dump)["status"] == "success"
    assert len(be.show(world.dump)["attempts"]) == 1
    assert not be.path("spool/paused").exists()


def test_a_secret_is_never_shown_to_the_front_end(world: World) -> None:
    be, fe1 = world.be, world.fe1
    assert SECRET in be.ok("context", "show", "@srv", "--show-secrets", "--json")
    log = be.fe(fe1, "task", "log", world.leak)
    assert log.code == 0 and "pw=[secret]" in log.out, log
    shown = be.fe(fe1, "task", "show", world.leak, "--json")
    for res in (log, shown, be.fe(fe1, "context", "show", "@srv", "--show-secrets")):
        assert SECRET not in res.out + res.err


# -- drops that go through, and drops that do not ----------------------------------------

def _base_doc(task_id: str, receipt: str) -> dict[str, Any]:
    return {"id": task_id, "type": "dump", "context": "@a.example",
            "options": {"val": "plain"}, "receipt": receipt}


@dataclass
class Drop:
    label: str
    reason: str  # a part of the reason the back end gives
    kind: str = "file"  # file, symlink, fifo, directory, hardlink
    data: bytes = b""
    receipt: str = ""
    task_id: str = field(default_factory=new_id)
    decoy_receipt: str = ""  # a receipt token that only appears inside a value

    @property
    def name(self) -> str:
        return f"{self.task_id}.task"


def _line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc) + "\n").encode()


def _doc_drop(label: str, reason: str, change: dict[str, Any], with_receipt: bool = True,
              **kw: Any) -> Drop:
    drop = Drop(label, reason, **kw)
    drop.receipt = secrets.token_hex(16) if with_receipt else ""
    doc = {**_base_doc(drop.task_id, drop.receipt), **change}
    drop.data = _line({k: v for k, v in doc.items() if v is not None})
    return drop


def _sized(size: int, context: str) -> Drop:
    """A valid submission of exactly ``size`` bytes (padding the option's value)."""
    drop = Drop(f"{size} bytes", "", receipt=secrets.token_hex(16))
    doc = {**_base_doc(drop.task_id, drop.receipt), "context": context}
    doc["options"] = {"val": ""}
    pad = size - len(_line(doc))
    doc["options"] = {"val": "x" * pad}
    drop.data = _line(doc)
    assert len(drop.data) == size
    return drop


def _big(label: str, size: int, receipt_first: bool = False, decoy: bool = False) -> Drop:
    """A drop of about ``size`` bytes (too large to admit) with a receipt, before or after
    the padding; with ``decoy``, an option value before it holds the text of another
    receipt key (``Drop.data`` of a decoy drop names it in ``decoy_receipt``)."""
    drop = Drop(label, f"more than {MAX_TASK_BYTES}", receipt=secrets.token_hex(16))
    doc: dict[str, Any] = {"id": drop.task_id}
    if receipt_first:
        doc["receipt"] = drop.receipt
    doc.update(type="dump", context="@a.example")
    pad = "x" * size
    if decoy:
        drop.decoy_receipt = secrets.token_hex(16)
        pad = f'"receipt": "{drop.decoy_receipt}", "x": "' + pad
    doc["options"] = {"val": pad}
    if not receipt_first:
        doc["receipt"] = drop.receipt
    drop.data = _line(doc)
    assert len(drop.data) > max(size, MAX_TASK_BYTES)
    return drop


def rejected_drops(home: Path, existing: str) -> list[Drop]:
    two = _line(_base_doc(new_id(), "")) * 2
    drops = [
        _doc_drop("submitter", "unknown key 'submitter'", {"submitter": 0}),
        _doc_drop("created", "unknown key 'created'", {"created": "2000-01-01T00:00:00.000Z"}),
        _doc_drop("events", "unknown key 'events'",
                  {"events": [{"event": "end", "outcome": "success"}]}),
        _doc_drop("unknown type", "unknown task type 'no-such-type'", {"type": "no-such-type"}),
        _doc_drop("missing context", "nowhere.example", {"context": "@nowhere.example"}),
        _doc_drop("bad context name", "invalid context name", {"context": "@../config"}),
        _doc_drop("wrong context type", "does not apply", {"context": "@srv"}),
        _doc_drop("undeclared option", "'other' is not declared", {"options": {"other": "1"}}),
        _doc_drop("option not a string", "must be an object of strings",
                  {"options": {"val": 1}}),
        _doc_drop("NUL in an option", "NUL", {"options": {"val": "a\x00b"}}),
        _doc_drop("protected", "may not change 'protected'",
                  {"context_options": {"protected": "false"}}),
        _doc_drop("locked", "may not change 'locked'",
                  {"type": "verify", "context": "@plat", "options": {},
                   "context_options": {"locked": "true"}}),
        _doc_drop("unknown field", "unknown field", {"context_options": {"no_such": "x"}}),
        _doc_drop("bad field value", "not a boolean",
                  {"context_options": {"site_enabled": "maybe"}}),
        # context options are checked as provision-save checks them...
        _doc_drop("reference to no context", "no context @nowhere.example",
                  {"context_options": {"client_name": "x", "db_server": "@nowhere.example"}}),
        _doc_drop("reference of the wrong type", "@srv is a server, not a platform",
                  {"context_options": {"platform": "@srv"}}),
        _doc_drop("required field reset", "a site needs --platform",
                  {"context_options": {"platform": "null"}}),
        # ... and a front end may set only [frontend] context_options (safe site fields)
        _doc_drop("a secret field", "may not set 'cron_key'",
                  {"context_options": {"language": "fr", "cron_key": "a-new-key"}}),
        _doc_drop("a secret field, other spelling", "may not set 'http-basic-auth-password'",
                  {"context_options": {"http-basic-auth-password": "pw"}}),
        _doc_drop("a reference", "may not set 'db_server'",
                  {"context_options": {"db_server": "@srv"}}),
        _doc_drop("a path", "may not set 'root'",
                  {"type": "verify", "context": "@plat", "options": {},
                   "context_options": {"root": "/etc"}}),
        _doc_drop("site_enabled", "may not set 'site_enabled'",
                  {"context_options": {"site_enabled": "false"}}),
        _doc_drop("priority", "'priority'", {"priority": 42}),
        _doc_drop("delay", "'delay'", {"delay": 10**9}),
        _doc_drop("format", "unsupported format", {"format": 99}),
        _doc_drop("malformed id", "malformed 'id'", {"id": "not-an-id"}),
        _doc_drop("reused id", "already exists", {"id": existing}),
        _doc_drop("bad receipt", "'receipt' must be", {"receipt": "NOT-A-RECEIPT"},
                  with_receipt=False),
        Drop("not JSON", "not JSON", data=b"{oops\n"),
        Drop("not an object", "not a JSON object", data=b'["verify"]\n'),
        _doc_drop("two lines", "one JSON line", {}),
        _big("oversized", MAX_TASK_BYTES + 1),
        _big("oversized, a decoy receipt in a value", 3 * MAX_TASK_BYTES, decoy=True),
        _big("huge, its receipt first", 2 * RECEIPT_SCAN_BYTES, receipt_first=True),
        _big("huge, its receipt after the head", 2 * RECEIPT_SCAN_BYTES),
        Drop("symlink", "not a regular file (a symbolic link)", kind="symlink",
             data=str(home / "contexts" / "srv.toml").encode()),
        Drop("fifo", "not a regular file", kind="fifo"),
        Drop("directory", "not a regular file", kind="directory"),
        _doc_drop("hard link", "hard-linked", {}, kind="hardlink"),
    ]
    by = {d.label: d for d in drops}
    by["two lines"].data += two
    return drops


def _drop_all(incoming: str, own: str, drops: list[tuple[str, str, bytes]]) -> list[str]:
    """As a front end: make each drop the way a front end in any language may."""
    made = []
    for name, kind, data in drops:
        final = os.path.join(incoming, name)
        if kind == "file":
            tmp = os.path.join(incoming, "." + name)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.rename(tmp, final)
        elif kind == "symlink":
            os.symlink(data.decode(), final)
        elif kind == "fifo":
            os.mkfifo(final, 0o640)
        elif kind == "directory":
            os.mkdir(final)
        elif kind == "hardlink":
            src = os.path.join(own, name)
            with open(src, "wb") as fh:
                fh.write(data)
            os.link(src, final)
        made.append(name)
    return made


def drop_as(be: Backend, user: User, drops: list[Drop]) -> None:
    incoming, own = str(be.path("spool/incoming")), str(user.home)
    items = [(d.name, d.kind, d.data) for d in drops]
    assert call_as(user, lambda: _drop_all(incoming, own, items)) == [d.name for d in drops]


@dataclass
class Admission:
    be: Backend
    fe1: User
    ok: str  # submitted with `task add`, admitted and run by the first dispatch
    cli_rejected: dict[str, str]  # `task add` submissions refused on admission
    under: Drop  # a little under the size limit, on @b.example
    exact: Drop  # exactly at the size limit, on @c.example
    raw_ok: Drop  # written by hand by the documented protocol
    bare: Drop  # names its context without the '@'
    drops: list[Drop]


@pytest.fixture(scope="module")
def admission(users: Users) -> Admission:
    be = make_backend(users, "home-admission")
    fe1 = users.members[0]
    ok = be.add(fe1, "dump", "@a.example", "--option", "val=fine")
    cli_rejected = {
        "unknown task type 'no-such-type'": be.add(fe1, "no-such-type", "@a.example"),
        "may not change 'protected'": be.add(fe1, "verify", "@a.example",
                                             "--context-option", "protected=false"),
        "'other' is not declared": be.add(fe1, "dump", "@a.example", "-o", "other=1"),
    }
    under, exact = _sized(MAX_TASK_BYTES - 256, "@b.example"), _sized(MAX_TASK_BYTES,
                                                                       "@c.example")
    drop_as(be, fe1, [under, exact])
    be.ok("dispatch")  # admits, then runs what it admitted
    raw_ok = _doc_drop("by hand", "", {"options": {"val": "by hand"}})
    bare = _doc_drop("bare name", "", {"context": "b.example"})
    drops = rejected_drops(be.home, ok)
    drop_as(be, fe1, [raw_ok, bare, *drops])
    be.ok("dispatch")  # admits again (the tasks queue is not due yet)
    return Admission(be, fe1, ok, cli_rejected, under, exact, raw_ok, bare, drops)


def test_dispatch_admits_and_runs_a_front_end_task(admission: Admission) -> None:
    be = admission.be
    doc = be.fe_json(admission.fe1, "task", "show", admission.ok)
    assert doc["status"] == "success" and doc["options"] == {"val": "fine"}
    assert be.show(admission.ok)["submitter"] == admission.fe1.uid


def test_a_drop_written_by_hand_is_admitted(admission: Admission) -> None:
    be, drop = admission.be, admission.raw_ok
    task = be.show(drop.task_id)
    assert task["submitter"] == admission.fe1.uid and task["options"] == {"val": "by hand"}
    assert task["status"] in ("queued", "success")  # queued, unless the queue came due
    doc = be.fe_json(admission.fe1, "task", "show", drop.task_id, "--receipt", drop.receipt)
    assert (doc["id"], doc["type"], doc["status"]) == (drop.task_id, "dump", task["status"])
    assert os.listdir(be.path("spool/incoming")) == []


def test_an_admitted_task_names_its_context_as_task_add_does(admission: Admission) -> None:
    be, task_id = admission.be, admission.bare.task_id
    assert be.show(task_id)["context"] == "@b.example"
    listed = json.loads(be.ok("task", "list", "--context", "@b.example", "--json"))
    assert task_id in [t["id"] for t in listed]


def test_a_submission_up_to_64_kib_runs_or_is_refused_never_lost(
        admission: Admission) -> None:
    be, fe1 = admission.be, admission.fe1
    under = be.fe_json(fe1, "task", "show", admission.under.task_id, "--receipt",
                       admission.under.receipt)
    assert under["status"] == "success", under
    assert len(be.dump(admission.under.task_id)["argv"][0]) == len(under["options"]["val"])
    exact = be.fe_json(fe1, "task", "show", admission.exact.task_id, "--receipt",
                       admission.exact.receipt)
    assert exact["status"] == "success" or exact.get("rejected") is True, exact
    assert os.listdir(be.path("spool/quarantine")) == []


def test_a_front_end_task_add_refused_on_admission_says_why(admission: Admission) -> None:
    be = admission.be
    for reason, task_id in admission.cli_rejected.items():
        doc = be.fe_json(admission.fe1, "task", "show", task_id)
        assert (doc["status"], doc["rejected"]) == ("error", True), doc
        assert doc["reason"].startswith("rejected: ") and reason in doc["reason"], doc
        assert be.run("task", "show", task_id).code == 2


@pytest.mark.parametrize("label", [d.label for d in rejected_drops(Path("/"), new_id())])
def test_a_bad_drop_is_rejected_with_its_reason(admission: Admission, label: str) -> None:
    be = admission.be
    drop = next(d for d in admission.drops if d.label == label)
    rejected = be.path("spool/rejected")
    assert (rejected / drop.name).exists() or (rejected / drop.name).is_symlink()
    reason = (rejected / f"{drop.name}.reason").read_text()
    assert drop.reason in reason, reason
    assert be.run("task", "show", drop.task_id).code == 2  # no such task
    assert drop.name not in os.listdir(be.path("spool/incoming"))
    if drop.receipt and drop.kind == "file" and drop.label not in PAST_THE_HEAD:
        doc = be.fe_json(admission.fe1, "task", "show", drop.task_id, "--receipt",
                         drop.receipt)
        assert (doc["status"], doc["status_code"], doc["rejected"]) == ("error", 2, True)
        assert drop.reason in doc["reason"], doc


# its receipt comes after the part of the file that is read to find it
PAST_THE_HEAD = {"huge, its receipt after the head"}


def test_an_oversized_drop_with_a_receipt_gets_a_rejected_receipt(
        admission: Admission) -> None:
    """Of a drop too large to admit, the back end reads only the head, and finds the
    receipt there as JSON would (a value that holds receipt-like text is no receipt)."""
    be, fe1 = admission.be, admission.fe1
    big = [d for d in admission.drops if d.label.startswith(("oversized", "huge"))]
    assert len(big) == 4
    for drop in big:
        assert (be.path("spool/rejected") / drop.name).exists(), drop.label
        doc = be.fe_json(fe1, "task", "show", drop.task_id, "--receipt", drop.receipt)
        if drop.label in PAST_THE_HEAD:
            assert doc["status"] == "incoming", doc  # no receipt was ever written
            continue
        assert (doc["id"], doc["status"], doc["rejected"]) == (drop.task_id, "error", True)
        assert f"more than {MAX_TASK_BYTES}" in doc["reason"], doc
    decoy = next(d for d in big if d.decoy_receipt)
    assert not be.path(f"spool/outbox/{decoy.decoy_receipt}.json").exists()
    res = be.fe(fe1, "task", "show", decoy.task_id, "--receipt", decoy.decoy_receipt,
                "--json")
    assert res.code == 0 and json.loads(res.out)["status"] == "incoming", res


def test_rejected_drops_changed_nothing(admission: Admission) -> None:
    be = admission.be
    site = json.loads(be.ok("context", "show", "@a.example", "--json"))["fields"]
    plat = json.loads(be.ok("context", "show", "@plat", "--json"))["fields"]
    assert (site["protected"], site["site_enabled"], plat["locked"]) == (False, True, False)
    assert (site["platform"], site["db_server"], site["language"]) == ("@plat", "@srv", "en")
    assert plat["root"] == str(be.www)
    secret = json.loads(be.ok("context", "show", "@a.example", "--json", "--show-secrets"))
    assert (secret["fields"]["cron_key"], secret["fields"]["http_basic_auth_password"]) == \
        ("", "")
    assert SECRET.encode() in be.path("contexts/srv.toml").read_bytes()
    assert be.show(admission.ok)["status"] == "success"


def test_task_add_refuses_an_oversized_submission_at_once(world: World) -> None:
    be = world.be
    res = be.fe(world.fe1, "task", "add", "dump", "@a.example", "-o",
                "val=" + "x" * MAX_TASK_BYTES)
    one_line_error(res)
    assert str(MAX_TASK_BYTES) in res.err
    assert os.listdir(be.path("spool/incoming")) == []


# -- the drop box itself -----------------------------------------------------------------

def test_the_drop_box_keeps_front_ends_apart(users: Users) -> None:
    be = make_backend(users, "home-box")
    fe1, fe2 = users.members
    guest, outsider = users.guest, users.outsider
    mine = be.add(fe1, "verify", "@a.example")
    theirs = be.add(guest, "verify", "@b.example")
    incoming = be.path("spool/incoming")
    # each drop belongs to its submitter, in the front-end group (setgid), readable by
    # the back end through that group; the folder keeps others from removing it (sticky)
    for task_id, user in ((mine, fe1), (theirs, guest)):
        st = os.stat(incoming / f"{task_id}.task")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
            (user.uid, users.gid, 0o640)
    assert guest.gid != users.gid
    path = str(incoming / f"{mine}.task")
    got = call_as(fe2, lambda: [attempt(lambda: os.listdir(os.path.dirname(path))),
                                attempt(lambda: os.unlink(path)),
                                attempt(lambda: os.rename(path, path + ".x")),
                                attempt(lambda: open(path, "wb").close())])
    assert got == ["PermissionError"] * 4
    # before admission the submitter sees it as incoming
    assert be.fe_json(fe1, "task", "show", mine)["status"] == "incoming"
    # a user outside the group cannot even reach the drop box
    res = be.fe(outsider, "task", "add", "verify", "@a.example")
    assert res.code != 0 and res.err.startswith("hostctl: error: ") and "Traceback" \
        not in res.err and res.err.count("\n") == 1, res
    assert sorted(os.listdir(incoming)) == sorted([f"{mine}.task", f"{theirs}.task"])
    be.ok("dispatch")
    assert be.show(mine)["submitter"] == fe1.uid and be.show(theirs)["submitter"] == guest.uid
    assert be.fe_json(guest, "task", "show", theirs)["status"] == "success"


def test_receipts_are_kept_in_the_user_state_folder_by_default(world: World) -> None:
    be, fe2 = world.be, world.fe2
    state = fe2.home / ".local" / "state" / "hostctl" / "receipts"
    res = be.fe(fe2, "task", "add", "verify", "@b.example", HOSTCTL_RECEIPTS=None)
    assert res.code == 0, res
    task_id = res.out.strip()
    try:
        assert len((state / task_id).read_text().strip()) == 32
        doc = json.loads(be.fe(fe2, "task", "show", task_id, "--json",
                               HOSTCTL_RECEIPTS=None).out)
        assert doc["status"] == "incoming"
        assert task_id not in be.fe(fe2, "task", "list").out  # another receipt book
    finally:
        be.ok("wait-queue", "--once")  # admits, and runs it (dispatch ran tasks already)
    doc = json.loads(be.fe(fe2, "task", "show", task_id, "--json", HOSTCTL_RECEIPTS=None).out)
    assert doc["status"] == "success"


# -- a running wait-queue ------------------------------------------------------------------

def test_a_running_wait_queue_admits_drops_as_it_sees_them(users: Users) -> None:
    be = make_backend(users, "home-daemon")
    fe1 = users.members[0]
    out = open(be.users.base / "home-daemon.out", "wb")  # noqa: SIM115
    daemon = subprocess.Popen(
        [hostctl_exe(), "--home", str(be.home), "wait-queue", "--max-runtime", "120"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out.close()
    try:
        workers = be.path("spool/workers")

        def housekept() -> bool:  # its first round (sweep and admit included) is over
            try:
                docs = [json.loads((workers / n).read_text()) for n in os.listdir(workers)]
            except (OSError, ValueError):
                return False
            return any(d["last_seen"] != d["started"] for d in docs)

        wait_for(housekept, 60, "wait-queue to start")
        task_id = be.add(fe1, "dump", "@a.example", "-o", "val=from the daemon")
        bad = _doc_drop("submitter", "unknown key 'submitter'", {"submitter": 0})
        drop_as(be, fe1, [bad])

        def admitted(task_id: str, receipt: str) -> dict[str, Any] | None:
            doc = be.fe_json(fe1, "task", "show", task_id, "--receipt", receipt)
            return doc if doc["status"] != "incoming" else None

        # the daemon also admits at its housekeeping, every minute: a drop must be seen
        # well before that (the wait is generous, and still shorter than a minute)
        wait_for(lambda: admitted(task_id, receipt_of(fe1, task_id)), 40, "admission",
                 interval=0.2)
        refused = wait_for(lambda: admitted(bad.task_id, bad.receipt), 40, "the rejection",
                           interval=0.2)
        assert refused["rejected"] is True and "submitter" in refused["reason"]
        log = be.fe(fe1, "task", "log", task_id, "--follow", timeout=60)
        assert log.code == 0 and log.out.rstrip().endswith("success"), log
        assert be.fe_json(fe1, "task", "show", task_id)["status"] == "success"
        assert be.show(task_id)["submitter"] == fe1.uid
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
    assert code == 0, (be.users.base / "home-daemon.out").read_text()


# -- context options: checked as provision-save checks them; a front end's are limited -------

SAVE_CASES = [("platform", "@nope"), ("platform", "@srv"), ("platform", "null"),
              ("platform", "@s.example"), ("db_server", "@plat"), ("site_enabled", "maybe"),
              ("no_such", "x"), ("db-server", "@nowhere")]


def test_task_add_checks_context_options_as_provision_save_does(run_hostctl,
                                                               home: Path) -> None:
    """Each context option that provision-save would refuse is refused by `task add` with
    provision-save's own message (exit 2), and nothing is queued or saved."""
    for argv in (("@srv", "--context_type", "server"),
                 ("@plat", "--context_type", "platform", "--root", "/srv/one"),
                 ("@plat2", "--context_type", "platform", "--root", "/srv/two"),
                 ("@s.example", "--context_type", "site", "--platform", "@plat",
                  "--db_server", "@srv")):
        assert run_hostctl("provision-save", *argv).code == 0
    site = home / "contexts" / "s.example.toml"
    before = site.read_bytes()
    for key, value in SAVE_CASES:
        saved = run_hostctl("provision-save", "@s.example", f"--{key}={value}")
        added = run_hostctl("task", "add", "verify", "@s.example", "--context-option",
                            f"{key}={value}")
        assert (saved.code, added.code) == (2, 2), (key, value, saved, added)
        assert added.out == "" and added.err == saved.err, (key, value, saved, added)
        assert added.err.startswith("hostctl: error: ") and added.err.count("\n") == 1
    assert site.read_bytes() == before
    assert json.loads(run_hostctl("task", "list", "--json").out) == []
    assert not (home / "spool").exists()  # not even a spool was made

    # valid ones are queued, and saved only when the task runs
    res = run_hostctl("task", "add", "verify", "@s.example", "-c", "platform=@plat2",
                      "-c", "db_server=null", "-c", "language=fr")
    assert res.code == 0, res
    assert site.read_bytes() == before
    assert run_hostctl("wait-queue", "--once").code == 0
    fields = json.loads(run_hostctl("context", "show", "@s.example", "--json").out)["fields"]
    assert (fields["platform"], fields["db_server"], fields["language"]) == \
        ("@plat2", None, "fr")


@pytest.mark.parametrize(("value", "error"), [
    ('["protected"]', "'protected' guards against dangerous tasks"),
    ('["locked"]', "'locked' guards against dangerous tasks"),
    ('["no_such"]', "unknown field 'no_such'"),
    ('"language"', "must be a list of field names"),
])
def test_frontend_context_options_in_config_are_checked(run_hostctl, home: Path,
                                                        value: str, error: str) -> None:
    home.mkdir()
    (home / "config.toml").write_text(f"[frontend]\ncontext_options = {value}\n")
    res = run_hostctl("task", "list")
    assert res.code == 2 and res.err.count("\n") == 1 and error in res.err, res


def test_the_fields_a_front_end_may_set_are_configurable(users: Users) -> None:
    """With [frontend] context_options = ["cron_key"], a drop may set the site's cron key
    (masked in its receipt and in task show) and no longer its language."""
    be = make_backend(users, "home-fields", {"frontend": {"context_options": ["cron_key"]}})
    fe1 = users.members[0]
    key = "cron-" + secrets.token_hex(8)
    allowed = be.add(fe1, "verify", "@a.example", "--context-option", f"cron_key={key}")
    refused = be.add(fe1, "verify", "@b.example", "--context-option", "language=fr")
    be.ok("dispatch")
    doc = be.fe_json(fe1, "task", "show", allowed)
    assert doc["status"] == "success" and doc["context_options"] == {"cron_key": "********"}
    token = receipt_of(fe1, allowed)
    assert key.encode() not in be.path(f"spool/outbox/{token}.json").read_bytes()
    assert key not in be.ok("task", "show", allowed, "--json")
    shown = json.loads(be.ok("context", "show", "@a.example", "--json", "--show-secrets"))
    assert shown["fields"]["cron_key"] == key
    doc = be.fe_json(fe1, "task", "show", refused)
    assert doc["rejected"] is True and "may not set 'language'" in doc["reason"], doc
    assert "it may set: cron_key" in doc["reason"]
    shown = json.loads(be.ok("context", "show", "@b.example", "--json"))
    assert shown["fields"]["language"] == "en"


# -- concurrent admitters ------------------------------------------------------------------

def _admit_until_empty(home: Path, start: Any) -> None:
    """In a forked child: admit (as dispatch and wait-queue do) until incoming/ is empty."""
    from hostctl.paths import Paths
    from hostctl.runners.home import Home

    backend = Home(Paths(home))
    check = backend.registry.check_envelope(backend.store)
    start.wait(30)
    incoming = home / "spool" / "incoming"
    while [n for n in os.listdir(incoming) if not n.startswith(".")]:
        backend.queue.admit(check)


def test_admitters_running_at_once_admit_each_drop_exactly_once(run_hostctl,
                                                                home: Path) -> None:
    """A dispatch and wait-queues admit at the same time: each drop must become exactly
    one task (none published twice, none rejected as its own duplicate), and its receipt
    must say it is queued."""
    import multiprocessing

    for argv in (("@srv", "--context_type", "server"),
                 ("@plat", "--context_type", "platform", "--root", "/srv/www"),
                 ("@a.example", "--context_type", "site", "--platform", "@plat")):
        assert run_hostctl("provision-save", *argv).code == 0
    from hostctl.paths import Paths
    from hostctl.runners.home import Home

    Home(Paths(home)).writable()  # the spool's folders
    incoming = home / "spool" / "incoming"
    drops = {}
    for n in range(300):
        task_id, receipt = new_id(), secrets.token_hex(16)
        doc = {"id": task_id, "type": "verify", "context": "@a.example", "receipt": receipt,
               "delay": 600 if n % 2 else 0}
        (incoming / f".{task_id}").write_bytes(_line(doc))
        os.rename(incoming / f".{task_id}", incoming / f"{task_id}.task")
        drops[task_id] = receipt
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_admit_until_empty, args=(home, start)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    names = [n for folder in ("new", "deferred") for n in os.listdir(home / "spool" / folder)]
    ids = sorted(n.removesuffix(".task")[-20:] for n in names)
    assert ids == sorted(drops), "a drop was lost or published twice"
    assert os.listdir(home / "spool" / "rejected") == []
    for task_id, receipt in drops.items():
        doc = json.loads((home / "spool" / "outbox" / f"{receipt}.json").read_text())
        assert (doc["id"], doc["status"]) == (task_id, "queued"), doc


# -- a back end that is not root -----------------------------------------------------------

WHOAMI = 'echo "ran $0 as uid $(id -u), note: $HOSTCTL_OPTION_NOTE"'


def test_an_unprivileged_back_end_serves_a_front_end(users: Users) -> None:
    """Root only makes the users and one empty folder, as an administrator would: the home
    belongs to a real unprivileged back-end user, which runs frontend setup, provision-save,
    dispatch and doctor as itself; a front-end user submits through the drop box and reads
    its receipt and its log. Every file access is what the kernel allows these two users."""
    backend, fe1 = users.backend, users.members[0]
    home = users.base / "home-unprivileged"
    home.mkdir(mode=0o700)
    os.chown(home, backend.uid, backend.gid)

    def be(*argv: str) -> str:
        res = hostctl_as(backend, "--home", str(home), *argv)
        assert res.code == 0, (argv, res)
        return res.out

    be("frontend", "setup", "--group", users.group)
    for rel, mode in {"": 0o710, "spool": 0o710, "spool/incoming": 0o3730,
                      "spool/outbox": 0o2710}.items():
        st = os.stat(home / rel)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
            (backend.uid, users.gid, mode), rel
    sh = shutil.which("sh") or "/bin/sh"
    config = {"tasks": {"whoami": {"command": [sh, "-c", WHOAMI, "{context}"],
                                   "context_types": ["site"], "options": {"note": "a note"}}}}

    def write_own_config() -> None:  # as the back end: its file, private
        write_config(home, config)
        os.chmod(home / "config.toml", 0o600)

    call_as(backend, write_own_config)
    be("provision-save", "@srv", "--context_type", "server", "--db_passwd", SECRET)
    be("provision-save", "@plat", "--context_type", "platform", "--root", str(backend.home))
    be("provision-save", "@a.example", "--context_type", "site", "--platform", "@plat",
       "--db_server", "@srv")

    res = hostctl_as(fe1, "task", "add", "whoami", "@a.example", "-o", "note=hello",
                     "--context-option", "language=fr", env={"HOSTCTL_HOME": str(home)})
    assert res.code == 0 and res.err == "", res
    task_id = res.out.strip()
    assert os.stat(home / "spool" / "incoming" / f"{task_id}.task").st_uid == fe1.uid
    be("dispatch")

    doc = json.loads(be("task", "show", task_id, "--json"))
    assert (doc["status"], doc["submitter"]) == ("success", fe1.uid), doc
    fe_env: dict[str, str | None] = {"HOSTCTL_HOME": str(home)}
    mine = json.loads(hostctl_as(fe1, "task", "show", task_id, "--json", env=fe_env).out)
    assert (mine["id"], mine["status"], mine["context_options"]) == \
        (task_id, "success", {"language": "fr"})
    log = hostctl_as(fe1, "task", "log", task_id, env=fe_env)
    assert log.code == 0, log
    assert f"ran @a.example as uid {backend.uid}, note: hello" in log.out
    fields = json.loads(be("context", "show", "@a.example", "--json"))["fields"]
    assert fields["language"] == "fr"

    # everything the back end made is its own; only the receipts are shared, group-read
    token = receipt_of(fe1, task_id)
    for top, _dirs, names in os.walk(home):
        for name in names:
            st = os.lstat(os.path.join(top, name))
            assert st.st_uid == backend.uid, os.path.join(top, name)
    for ext in ("json", "log"):
        st = os.stat(home / "spool" / "outbox" / f"{token}.{ext}")
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (users.gid, 0o640), ext
    got = call_as(fe1, lambda: [attempt(lambda: os.listdir(home)),
                                attempt(lambda: (home / "contexts" / "srv.toml").read_bytes()),
                                attempt(lambda: os.listdir(home / "logs"))])
    assert got == ["PermissionError"] * 3
    assert "as they should be" in be("doctor")
    os.chmod(home / "contexts" / "srv.toml", 0o644)  # doctor --fix needs no root for modes
    assert hostctl_as(backend, "--home", str(home), "doctor").code == 1
    assert "fixed: " in be("doctor", "--fix")
    assert stat.S_IMODE(os.stat(home / "contexts" / "srv.toml").st_mode) == 0o600


def test_a_drop_back_after_a_power_cut_is_removed_not_rejected(run_hostctl,
                                                                home: Path) -> None:
    """Admission publishes the task (fsynced) and then removes the drop: a power cut in
    between may bring the drop back. Its task exists with its receipt and submitter: the
    drop goes, its receipt keeps saying queued. Anyone else's drop with that id is still
    refused as a duplicate, and the task's receipt is left alone."""
    from hostctl.paths import Paths
    from hostctl.runners.home import Home

    for argv in (("@srv", "--context_type", "server"),
                 ("@plat", "--context_type", "platform", "--root", "/srv/www"),
                 ("@a.example", "--context_type", "site", "--platform", "@plat")):
        assert run_hostctl("provision-save", *argv).code == 0
    backend = Home(Paths(home))
    spool = backend.writable()
    check = backend.registry.check_envelope(backend.store)
    incoming, outbox = home / "spool" / "incoming", home / "spool" / "outbox"
    task_id, receipt = new_id(), secrets.token_hex(16)
    data = _line({"id": task_id, "type": "verify", "context": "@a.example",
                  "receipt": receipt})
    drop = incoming / f"{task_id}.task"
    drop.write_bytes(data)
    assert spool.admit(check)[0].startswith(f"admitted task {task_id}")

    drop.write_bytes(data)  # its removal was lost
    notes = spool.admit(check)
    assert notes == [f"incoming/{drop.name} was admitted before (task {task_id})"]
    assert os.listdir(incoming) == [] and os.listdir(home / "spool" / "rejected") == []
    assert json.loads((outbox / f"{receipt}.json").read_text())["status"] == "queued"
    assert [t.id for t in spool.tasks_in()] == [task_id]

    drop.write_bytes(data)
    os.chown(drop, 65534, -1)  # the same bytes from another user
    assert "already exists" in spool.admit(check)[0]
    assert json.loads((outbox / f"{receipt}.json").read_text())["status"] == "queued"
    assert [t.id for t in spool.tasks_in()] == [task_id]
    assert sorted(os.listdir(home / "spool" / "rejected")) == [drop.name, f"{drop.name}.reason"]


def test_a_drop_on_a_malformed_context_waits_and_the_others_go_in(
        run_hostctl, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A context file the back end cannot read is the back end's trouble, not the drop's:
    the drop waits in incoming/ (one warning, not one per pass), the others are admitted,
    and it goes in once the file is repaired."""
    from hostctl.paths import Paths
    from hostctl.runners.home import Home

    for argv in (("@srv", "--context_type", "server"),
                 ("@plat", "--context_type", "platform", "--root", "/srv/www"),
                 ("@a.example", "--context_type", "site", "--platform", "@plat"),
                 ("@b.example", "--context_type", "site", "--platform", "@plat")):
        assert run_hostctl("provision-save", *argv).code == 0
    backend = Home(Paths(home))
    spool = backend.writable()
    check = backend.registry.check_envelope(backend.store)
    incoming = home / "spool" / "incoming"
    ids = {}
    for site in ("a.example", "b.example"):
        ids[site] = new_id()
        (incoming / f"{ids[site]}.task").write_bytes(
            _line({"id": ids[site], "type": "verify", "context": f"@{site}"}))
    ctx = home / "contexts" / "a.example.toml"
    good = ctx.read_bytes()
    ctx.write_bytes(b"format = [broken\n")
    for _ in range(2):
        notes = spool.admit(check)
    assert notes == []  # b was admitted by the first pass
    assert os.listdir(incoming) == [f"{ids['a.example']}.task"]
    assert os.listdir(home / "spool" / "rejected") == []
    warned = [r.getMessage() for r in caplog.records if "cannot admit" in r.getMessage()]
    assert len(warned) == 1 and "malformed context file" in warned[0], warned
    assert [t.id for t in spool.tasks_in()] == [ids["b.example"]]
    ctx.write_bytes(good)
    assert spool.admit(check)[0].startswith(f"admitted task {ids['a.example']}")
    assert sorted(t.id for t in spool.tasks_in()) == sorted(ids.values())
