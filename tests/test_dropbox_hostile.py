"""No entry a front-end user can make in incoming/ stops admission.

A real front-end user makes every kind of entry it can (deep JSON, a folder the back end
may not write into, FIFOs, sockets, links, unreadable files, names with control bytes or
bytes that are not UTF-8, names too long to carry a suffix, numbers JSON cannot hold) among
valid drops; a real back-end user (not root: it has no power over the front end's folder)
runs `dispatch`. Every valid drop is admitted and run in that one pass, every other entry
is rejected or set aside with a reason, nothing printed carries a control byte, and
`doctor` reports exactly the entries it cannot remove.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asuser import Users, call_as, can_make_users, frontend_users, hostctl_as
from hypothesis import given, settings
from hypothesis import strategies as st

from hostctl.errors import InvalidInput
from hostctl.queues.admission import decode_submission
from hostctl.queues.model import new_id
from hostctl.text import printable

SH = "/bin/sh"


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    why = can_make_users()
    if why:
        pytest.skip(why)
    with frontend_users(1) as made:
        yield made


@dataclass
class Backend:
    users: Users
    home: Path
    www: Path

    def run(self, *argv: str) -> Any:
        return hostctl_as(self.users.backend, "--home", str(self.home), *argv, timeout=120)

    def ok(self, *argv: str) -> str:
        res = self.run(*argv)
        assert res.code == 0, (argv, res)
        return str(res.out)


def make_backend(users: Users, name: str) -> Backend:
    be_user = users.backend
    top = users.base / name
    top.mkdir(mode=0o711)
    www = top / "www"
    www.mkdir(mode=0o700)
    for folder in (top, www):
        os.chown(folder, be_user.uid, be_user.gid)
    be = Backend(users, top / "home", www)
    be.ok("frontend", "setup", "--group", users.group)
    config = be.home / "config.toml"
    config.write_text(
        '[tasks.note]\ncontext_types = ["site"]\n'
        f'command = ["{SH}", "-c", "echo \\"$1\\" >> \\"$2\\"", "sh", "{{task_id}}", '
        '"{root}/ran"]\n')
    os.chown(config, be_user.uid, be_user.gid)
    os.chmod(config, 0o600)
    be.ok("provision-save", "@srv", "--context_type", "server", "--db_service_type", "none",
          "--http_service_type", "none")
    be.ok("provision-save", "@plat", "--context_type", "platform", "--root", str(www),
          "--web_server", "@srv")
    be.ok("provision-save", "@a.example", "--context_type", "site", "--platform", "@plat",
          "--db_server", "@srv")
    return be


def valid(task_id: str) -> bytes:
    return (json.dumps({"id": task_id, "type": "note", "context": "@a.example"}) + "\n"
            ).encode()


def make_entries(incoming: str, good: dict[str, bytes], target: str) -> list[str]:
    """As the front-end user: every kind of entry it may make; returns what it made."""
    inc = os.fsencode(incoming)

    def put(name: bytes, data: bytes, mode: int = 0o640) -> None:
        tmp = os.path.join(inc, b"." + name[:200])
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
        os.chmod(tmp, mode)
        os.rename(tmp, os.path.join(inc, name))

    made = []
    for name, data in good.items():
        put(name.encode(), data)
        made.append(name)
    one = json.dumps({"id": new_id(), "type": "note", "context": "@a.example"})
    put(b"deep.task", b"[" * 60_000 + b"\n")  # under the size limit
    put(b"deep-object.task", b"{\"a\":" * 12_000 + b"\n")
    put(b"nan.task", one.replace('"note"', '"note", "priority": NaN').encode() + b"\n")
    put(b"huge-int.task", one.replace('"note"', '"note", "priority": ' + "9" * 5000)
        .encode() + b"\n")
    put(b"inf.task", one.replace('"note"', '"note", "delay": 1e999').encode() + b"\n")
    put(b"unreadable.task", valid(new_id()), mode=0)
    put(b"evil\n\x1b[31mred\x07\x1b]0;title\x07.task", b"not json\n")
    put(b"\xff\xfe-not-utf8.task", b"\xff\n")
    put(b"L" * 250, b"{}\n")  # a name with no room left for a suffix
    put(b"\xe2\x80\xaerlo.task", b"[]\n")  # a right-to-left override
    os.mkdir(os.path.join(inc, b"folder.task"), 0o755)  # the back end may not write in it
    with open(os.path.join(inc, b"folder.task", b"inside"), "wb") as f:
        f.write(valid(new_id()))
    os.mkdir(os.path.join(inc, b"locked-folder"), 0o700)
    os.mkfifo(os.path.join(inc, b"fifo.task"))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(inc, b"socket.task"))
    sock.close()
    os.symlink(target, os.path.join(inc, b"symlink.task"))
    os.symlink(b"nowhere/at/all", os.path.join(inc, b"dangling.task"))
    put(b"linked.task", valid(new_id()))
    os.link(os.path.join(inc, b"linked.task"), os.path.join(inc, b"linked-twice.task"))
    for dot, age in ((b".stale-dot", 7200), (b".fresh-dot", 0)):
        fd = os.open(os.path.join(inc, dot), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"half a drop")
        os.close(fd)
        then = time.time() - age
        os.utime(os.path.join(inc, dot), (then, then))
    return made


FOLDERS = {"folder.task", "locked-folder"}


def test_no_entry_stops_admission_and_every_valid_drop_runs(users: Users) -> None:
    be = make_backend(users, "hostile")
    fe = users.members[0]
    ids = sorted(new_id() for _ in range(3))
    # valid drops sorted before, among and after the hostile ones
    good = {f"0-{ids[0]}.task": valid(ids[0]), f"m-{ids[1]}.task": valid(ids[1]),
            f"zzzzzz-{ids[2]}.task": valid(ids[2])}
    incoming = be.home / "spool" / "incoming"
    assert call_as(fe, lambda: make_entries(str(incoming), good,
                                            str(be.home / "contexts" / "srv.toml")))

    res = be.run("dispatch")
    assert res.code == 0 and "internal error" not in res.err, res
    ran = sorted((be.www / "ran").read_text().split())
    assert ran == ids  # admitted and run in that one pass

    left = sorted(os.listdir(incoming))
    assert left == sorted([".fresh-dot", *FOLDERS]), left  # the stale dot-name went
    rejected = be.home / "spool" / "rejected"
    entries = [n for n in os.listdir(rejected) if not n.endswith(".reason")]
    assert len(entries) == 16, sorted(entries)
    reasons = {n: (rejected / f"{n}.reason").read_text() for n in entries}
    assert all(r.strip() for r in reasons.values())
    assert any("nested too deep" in r for r in reasons.values())
    assert any("not a regular file (a FIFO)" in r for r in reasons.values())
    assert any("hard-linked" in r for r in reasons.values())

    status = be.ok("queue", "status")
    assert not any(ord(c) < 32 and c != "\n" for c in status), status
    assert sum(line.startswith("rejected submission:") for line in status.splitlines()) == 16
    assert printable("evil\n\x1b[31mred") in status

    doctor = be.run("doctor")
    assert doctor.code == 1, doctor
    problems = [ln for ln in doctor.out.splitlines() if ln.startswith("PROBLEM")]
    assert sorted(p.split(": ")[1].rsplit("/", 1)[1] for p in problems) == sorted(FOLDERS), \
        doctor.out
    fix = be.run("doctor", "--fix")  # not root: it says who can remove them
    assert fix.code == 1 and "as root" in fix.out, fix

    # the runners go on: a later drop is admitted by wait-queue, past what was set aside
    later = new_id()
    assert call_as(fe, lambda: make_entries_one(str(incoming), later)) == later
    res = be.run("wait-queue", "--once")
    assert res.code == 0, res
    assert later in (be.www / "ran").read_text().split()
    log = (be.home / "logs" / "hostctl.log").read_text()
    assert log.count("incoming/folder.task is set aside where it lies") == 2  # per process
    assert not any(ord(c) < 32 and c != "\n" for c in log)

    # root removes what the back end cannot, and doctor is content
    root_fix = hostctl_as(None, "--home", str(be.home), "doctor", "--fix")
    assert root_fix.code == 0, root_fix
    assert be.run("doctor").code == 0


def make_entries_one(incoming: str, task_id: str) -> str:
    tmp = os.path.join(incoming, f".{task_id}")
    with open(tmp, "wb") as f:
        f.write(valid(task_id))
    os.rename(tmp, os.path.join(incoming, f"{task_id}.task"))
    return task_id


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["id", "type", "context", "options", "context_options",
                                     "priority", "delay", "receipt", "format"]),
                    json_values, max_size=9).map(lambda d: json.dumps(d).encode()),
    # a valid submission with some of its keys replaced: each check is reached
    st.dictionaries(st.sampled_from(["options", "context_options", "priority", "delay",
                                     "receipt", "format", "type", "context"]),
                    json_values, max_size=4)
    .map(lambda d: json.dumps({"id": "01a2439d89e240249b49", "type": "verify",
                               "context": "@a.example", **d}).encode()),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n),
))
def test_any_content_is_a_submission_or_one_clean_refusal(data: bytes) -> None:
    """Whatever bytes a drop holds, judging them ends in a submission or InvalidInput:
    never another exception, which would stop admission for every drop."""
    try:
        decode_submission(data, 1000)
    except InvalidInput:
        pass


def test_the_escaped_text_is_one_line_and_keeps_ordinary_text() -> None:
    assert printable("café 中文 ok") == "café 中文 ok"
    for nasty in ("a\nb", "\x1b[2J", "x\u202ey", "\udcff", "\r", "\x7f", "\u2028"):
        out = printable(nasty)
        assert out.isprintable() and "\n" not in out, (nasty, out)
    assert printable("a\\nb") != printable("a\nb")  # no two texts print alike




@pytest.mark.parametrize("data", [
    b'{"id": null, "context_options": 1}',  # found by the property above
    b'{"options": "x"}', b'{"context_options": [1, 2]}', b'{"options": {"a": 1}}',
])
def test_options_that_are_not_objects_are_one_clean_refusal(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_submission(data, 1000)
