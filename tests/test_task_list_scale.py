"""``task list`` at scale: the spool's catalog (queues/catalog.py) answers its filters, so
a filtered list opens only the task files it shows, and it always equals what a full scan
of the folders says, whatever happened to the catalog."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from taskhelpers import build_template, hostctl_cmd, use_template, write_config

from hostctl.queues.model import Envelope, Status, Task, TaskQuery, encode_task, new_id
from hostctl.queues.spool import Spool
from hostctl.times import utc_iso

TYPES = ["verify", "backup", "install"]
CONTEXTS = ["@a.example", "@b.example", "@c.example", "@d.example"]
OUTCOMES = ["success", "error", "warning", "cancelled", "lost"]
FOLDERS = ("new", "deferred", "active", "done", "quarantine")


def spool_of(home: Path) -> Spool:
    spool = Spool(home / "spool", home / "logs")
    spool.ensure()
    return spool


def full_scan_in(home: Path, folders: tuple[str, ...]) -> list[str]:
    """The ids of the tasks in those folders, as their files say."""
    spool = Spool(home / "spool", home / "logs")
    found = []
    for state in folders:
        folder = home / "spool" / state
        for name in sorted(os.listdir(folder)) if folder.exists() else []:
            try:
                found.append(spool._read_path(folder / name, state).id)
            except Exception:  # noqa: BLE001 - garbage that does not read as a task
                continue
    return found


def full_scan(home: Path, query: TaskQuery) -> list[str]:
    """What every task file says, newest first: the truth a list must equal."""
    spool = Spool(home / "spool", home / "logs")
    found: list[Task] = []
    for state in FOLDERS:
        folder = home / "spool" / state
        names = sorted(os.listdir(folder)) if folder.exists() else []
        for name in names:
            if name.startswith(".") or name.endswith(".reason"):
                continue
            try:
                found.append(spool._read_path(folder / name, state))
            except Exception:  # noqa: BLE001 - garbage that does not read as a task
                continue
    wanted = sorted((t for t in found if query.wants(t)), key=lambda t: t.id, reverse=True)
    ids = [t.id for t in wanted]
    return ids if query.limit is None else ids[:query.limit]


def queries() -> Iterator[tuple[list[str], TaskQuery]]:
    """Every filter alone and a few together, each with and without a limit."""
    base: list[tuple[list[str], TaskQuery]] = [([], TaskQuery())]
    base += [(["--type", t], TaskQuery(type=t)) for t in [*TYPES, "nosuch"]]
    base += [(["--context", c], TaskQuery(context=c)) for c in CONTEXTS]
    base += [(["--status", s.label], TaskQuery(statuses=frozenset([s]))) for s in Status]
    base += [(["--type", "backup", "--status", "error", "--context", "@a.example"],
              TaskQuery(type="backup", statuses=frozenset([Status.ERROR]),
                        context="@a.example"))]
    for argv, query in base:
        yield [*argv, "--limit", "0"], query
        yield [*argv, "--limit", "3"], query._replace(limit=3)


def listed(run_hostctl: Callable[..., Any], argv: list[str]) -> list[str]:
    res = run_hostctl("task", "list", *argv, "--json")
    assert res.code == 0, res.err
    return [doc["id"] for doc in json.loads(res.out)]


def assert_lists_equal_full_scan(run_hostctl: Callable[..., Any], home: Path) -> None:
    for argv, query in queries():
        assert listed(run_hostctl, argv) == full_scan(home, query), argv
    # and queue status's counts, which take how a task ended from the catalog too
    res = run_hostctl("queue", "status", "--json")
    assert res.code == 0, res
    counts = json.loads(res.out)["counts"]
    quarantined = set(full_scan_in(home, ("quarantine",)))
    for status in Status:
        assert counts[status.label] == len(set(full_scan(home, TaskQuery(
            statuses=frozenset([status])))) - quarantined), status


def write_done(home: Path, task_type: str, context: str, outcome: str) -> str:
    """A finished task written straight into done/, as another tool (or an older hostctl)
    would leave it: the catalog knows nothing of it."""
    env = Envelope(new_id(), task_type, context, {}, {}, 5, utc_iso())
    at = utc_iso()
    events = ({"event": "start", "at": at, "attempt": 1, "pid": 2, "worker": 1},
              {"event": "end", "at": at, "outcome": outcome, "exit": 0, "reason": "",
               "result": {}})
    path = home / "spool" / "done" / f"{env.id}.task"
    path.write_bytes(encode_task(Task(env, events, "done")))
    return env.id


def run_one(spool: Spool, rng: random.Random) -> None:
    """Claim the next ready task and end it one way or another."""
    for claim in spool.claim(limit=1):
        roll = rng.random()
        if roll < 0.15:
            spool.defer(claim, rng.choice([0.0, 3600.0]))
        elif roll < 0.2:
            spool.requeue(claim)
        else:
            spool.finish(claim, rng.choice(OUTCOMES))


def storm_step(spool: Spool, home: Path, rng: random.Random) -> None:
    roll = rng.random()
    done = sorted(os.listdir(home / "spool" / "done"))
    if roll < 0.35:
        env = Envelope(new_id(), rng.choice(TYPES), rng.choice(CONTEXTS),
                       {"n": str(rng.random())}, {}, rng.randint(0, 9), utc_iso())
        spool.publish(env, delay=rng.choice([0.0, 0.0, 3600.0]))
    elif roll < 0.65:
        run_one(spool, rng)
    elif roll < 0.72 and done:
        spool.retry(rng.choice(done)[:20])
    elif roll < 0.77 and done:
        spool.remove_done(home / "spool" / "done" / rng.choice(done))  # task_gc
    elif roll < 0.82:
        write_done(home, rng.choice(TYPES), rng.choice(CONTEXTS), rng.choice(OUTCOMES))
    elif roll < 0.86:
        spool.compact_catalog()
    elif roll < 0.89:
        damage_catalog(home, rng)
    elif roll < 0.91:
        queued = os.listdir(home / "spool" / "new")
        if queued:
            spool.cancel_queued(rng.choice(queued)[1:21])
    elif roll < 0.93:
        garbage = home / "spool" / "quarantine" / f"junk{rng.randint(0, 99)}"
        garbage.write_text("not a task\n")
    else:
        spool.promote_due(now=10**12)


def damage_catalog(home: Path, rng: random.Random) -> None:
    folder = home / "spool" / "catalog"
    victims = [p for p in (folder / "base", folder / "log") if p.exists()]
    if not victims:
        return
    victim = rng.choice(victims)
    how = rng.choice(["delete", "truncate", "scribble", "wrong"])
    if how == "delete":
        victim.unlink()
    elif how == "truncate":
        data = victim.read_bytes()
        victim.write_bytes(data[: rng.randint(0, len(data))])
    elif how == "scribble":
        data = bytearray(victim.read_bytes())
        if data:
            data[rng.randrange(len(data))] ^= 0x5A
        victim.write_bytes(bytes(data))
    else:  # lines that look right but lie about a task whose file says otherwise
        with open(folder / "log", "a") as fh:
            fh.write(f"{new_id()} verify @a.example 10 success 00000000\n")


@pytest.mark.parametrize("seed", range(4))
def test_filtered_lists_always_equal_a_full_scan(seed: int, run_hostctl, home: Path
                                                  ) -> None:
    rng = random.Random(seed)
    spool = spool_of(home)
    for round_ in range(5):
        for _ in range(40):
            storm_step(spool, home, rng)
        assert_lists_equal_full_scan(run_hostctl, home)
        if round_ == 2:
            spool.collect(retention_days=10_000, now=0, limit=0)  # compacts


def test_retried_and_finished_again_shows_its_last_end(run_hostctl, home: Path) -> None:
    spool = spool_of(home)
    env = Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso())
    spool.publish(env)
    spool.finish(spool.claim()[0], "error")
    spool.compact_catalog()  # the error is in the base now
    spool.retry(env.id)
    spool.finish(spool.claim()[0], "success")
    assert listed(run_hostctl, ["--status", "success"]) == [env.id]
    assert listed(run_hostctl, ["--status", "error"]) == []
    spool.compact_catalog()
    assert listed(run_hostctl, ["--status", "success"]) == [env.id]


def test_a_finish_the_catalog_missed_is_found_by_compaction(run_hostctl, home: Path) -> None:
    """A task finished again by a writer that kept no catalog (an older hostctl): the
    compaction sees its file grew and reads it again."""
    spool = spool_of(home)
    env = Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso())
    spool.publish(env)
    spool.finish(spool.claim()[0], "error")
    path = home / "spool" / "done" / f"{env.id}.task"
    with open(path, "ab") as fh:
        fh.write(b'{"event":"retry"}\n{"event":"end","outcome":"success"}\n')
    spool.compact_catalog()
    assert listed(run_hostctl, ["--status", "success"]) == [env.id]


class Opens:
    """Counts the task files a list reads (Spool's one reading method for it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = Spool._read_sized

        def counted(spool: Spool, path: Path, state: str) -> tuple[Task, int]:
            self.paths.append(path.name)
            return real(spool, path, state)

        monkeypatch.setattr(Spool, "_read_sized", counted)

    def during(self, run: Callable[[], list[str]]) -> tuple[list[str], int]:
        self.paths.clear()
        shown = run()
        return shown, len(self.paths)


def test_a_filtered_list_opens_only_the_files_it_shows(run_hostctl, home: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    spool = spool_of(home)
    rng = random.Random(1)
    catalogued = set()
    for i in range(300):  # 60 written by hostctl, the rest behind its back
        if i % 5 == 0:
            env = Envelope(new_id(), rng.choice(TYPES), rng.choice(CONTEXTS), {"i": str(i)},
                           {}, 5, utc_iso())
            spool.publish(env)
            catalogued.add(env.id)
            spool.finish(spool.claim()[0], rng.choice(OUTCOMES))
        else:
            write_done(home, rng.choice(TYPES), rng.choice(CONTEXTS), rng.choice(OUTCOMES))
    opens = Opens(monkeypatch)
    # unknown to the catalog: read once (and noted), then never again
    first, count = opens.during(lambda: listed(run_hostctl, ["--context", "@b.example"]))
    assert count == 240 + len(catalogued & set(first)) and first
    for argv in (["--context", "@b.example"], ["--type", "backup"],
                 ["--status", "warning"], ["--type", "install", "--context", "@c.example"],
                 ["--status", "error", "--limit", "5"], [], ["--limit", "7"],
                 ["--type", "nosuch"]):
        shown, count = opens.during(lambda argv=argv: listed(run_hostctl, argv))
        # with --limit N the list asks for N + 1, to say whether there are more
        assert count == len(shown) + ("--limit" in argv and len(shown) == int(argv[-1])), \
            (argv, count, len(shown))
    spool.compact_catalog()
    shown, count = opens.during(lambda: listed(run_hostctl, ["--context", "@d.example"]))
    assert count == len(shown) > 0
    # a deleted catalog: every file is read again, and the list is still right
    for path in (home / "spool" / "catalog").iterdir():
        path.unlink()
    again, count = opens.during(lambda: listed(run_hostctl, ["--context", "@b.example"]))
    assert again == first and count == 300


def test_queue_status_opens_only_the_queued_tasks_files(run_hostctl, home: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """How the finished tasks ended is the catalog's word: ``queue status`` reads the
    queued tasks (for the oldest's age) and a finished one only where the catalog does
    not know it, once."""
    spool = spool_of(home)
    rng = random.Random(2)
    for i in range(200):
        if i % 4 == 0:
            env = Envelope(new_id(), rng.choice(TYPES), rng.choice(CONTEXTS), {}, {}, 5,
                           utc_iso())
            spool.publish(env)
            spool.finish(spool.claim()[0], rng.choice(OUTCOMES))
        else:
            write_done(home, rng.choice(TYPES), rng.choice(CONTEXTS), rng.choice(OUTCOMES))
    for i in range(3):
        spool.publish(Envelope(new_id(), "verify", "@a.example", {"n": str(i)}, {}, 5,
                               utc_iso()))
    opens = Opens(monkeypatch)

    def status() -> list[str]:
        res = run_hostctl("queue", "status", "--json")
        assert res.code == 0, res
        counts = json.loads(res.out)["counts"]
        return [str(counts[s.label]) for s in Status]

    first, count = opens.during(status)
    assert count == 150 + 3  # the finished ones unknown to the catalog, and the queued
    again, count = opens.during(status)
    assert again == first and count == 3
    assert sum(map(int, first)) == 203 and first[0] == "3"


def test_queue_status_reads_a_finished_task_whose_file_outgrew_its_entry(
        run_hostctl, home: Path) -> None:
    """A task ended again behind the catalog's back (a writer that could not note it:
    another user, a power cut that took the log's tail): its entry no longer gives the
    file's size, so its file is read, and it counts as it ended last."""
    spool = spool_of(home)
    env = Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso())
    spool.publish(env)
    spool.finish(spool.claim()[0], "success")
    spool.compact_catalog()  # its entry says success
    with open(home / "spool" / "done" / f"{env.id}.task", "ab") as fh:
        fh.write(b'{"event":"retry"}\n{"event":"cancel"}\n'
                 b'{"event":"end","outcome":"cancelled"}\n')
    res = run_hostctl("queue", "status", "--json")
    assert res.code == 0, res
    counts = json.loads(res.out)["counts"]
    assert (counts["success"], counts["cancelled"]) == (0, 1)


def test_concurrent_task_adds_keep_the_catalog_whole(run_hostctl, home: Path,
                                                     tmp_path_factory: pytest.TempPathFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sites = [c.lstrip("@") for c in CONTEXTS]
    write_config(home, {"tasks": {"note": {"command": ["true"], "context_types": ["site"],
                                           "options": {"tag": "a tag"}}}})
    use_template(build_template(tmp_path_factory.mktemp("template"), sites), home,
                 run_hostctl)
    script = ('for i in 1 2 3 4 5 6 7 8; do "$@" task add note "@$SITE" -o "tag=$W.$i" '
              '>/dev/null || exit 1; done')
    procs = [subprocess.Popen(["sh", "-c", script, "sh", *hostctl_cmd()],
                              env={**os.environ, "HOSTCTL_HOME": str(home),
                                   "SITE": sites[w % len(sites)], "W": str(w)})
             for w in range(8)]
    spool = spool_of(home)
    for _ in range(3):  # compactions and workers beside the adds
        spool.compact_catalog()
        run_one(spool, random.Random(3))
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert_lists_equal_full_scan(run_hostctl, home)
    known = spool.catalog.load()
    assert all(i in known for i in full_scan(home, TaskQuery()))
    opens = Opens(monkeypatch)
    shown, count = opens.during(lambda: listed(run_hostctl, ["--context", "@c.example"]))
    assert count == len(shown) == 16



def test_a_reader_of_another_user_writes_nothing_into_the_spool(run_hostctl, home: Path
                                                                ) -> None:
    """root looking at the back end's home (``task list``) reads every file the catalog
    does not know, but notes nothing and compacts nothing: a file root made in the spool
    would be root's, and the back end could no longer append to it."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give the spool to another user")
    spool = spool_of(home)
    for _ in range(5):
        write_done(home, "verify", "@a.example", "success")
    catalog = home / "spool" / "catalog"
    shutil.rmtree(catalog, ignore_errors=True)
    os.chown(home / "spool", 65534, 65534)  # the spool is now another user's
    try:
        assert len(listed(run_hostctl, ["--context", "@a.example"])) == 5
        assert not catalog.exists()
        assert not spool.catalog.writable()
    finally:
        os.chown(home / "spool", os.geteuid(), os.getegid())
    assert len(listed(run_hostctl, ["--context", "@a.example"])) == 5
    assert Spool(home / "spool", home / "logs").catalog.writable()
    assert (catalog / "log").exists()  # the owner notes what it read


def test_a_retry_outweighs_the_last_end_even_when_the_next_end_is_not_catalogued(
        run_hostctl, home: Path) -> None:
    """A task ended in error, retried, and ended in success, but the catalog never got
    the second end (a power cut: its appends are not fsynced): the retry's own entry
    outweighs the first end, so --status success reads the file and lists the task."""
    spool = spool_of(home)
    env = Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso())
    spool.publish(env)
    spool.finish(spool.claim()[0], "error")
    spool.retry(env.id)
    log = home / "spool" / "catalog" / "log"
    kept = log.read_bytes()  # up to the retry's entry
    spool.finish(spool.claim()[0], "success")
    log.write_bytes(kept)  # the second end is lost
    assert listed(run_hostctl, ["--status", "success"]) == [env.id]
    assert listed(run_hostctl, ["--status", "error"]) == []
