"""The context store's contract (contexts/store.py), run on every implementation: the TOML
files under a home and the cluster's PostgreSQL (a real server, made by initdb).

Each test speaks to the store only through a proxy that refuses anything outside
ContextStore; a second handle on the same storage (``other``) plays another host. Races
are real processes: saves of different fields of one context lose none, and of two sites
claiming one host name exactly one wins.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pghelpers import SECRET
from provisionhelpers import PgCluster

from hostctl.contexts.pgstore import PgStore
from hostctl.contexts.store import ContextStore, TomlStore
from hostctl.errors import Conflict, InvalidInput, MalformedFile, NotFound
from hostctl.paths import Paths
from hostctl.runners import cluster


def members(protocol: type) -> set[str]:
    return {n for n in vars(protocol) if not n.startswith("_")}


class OnlyStore:
    """A store that offers only ContextStore's methods."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name not in members(ContextStore):
            raise AssertionError(f"the caller used store.{name}")
        return getattr(self._inner, name)


@pytest.fixture
def pg(pg_server: PgCluster) -> PgCluster:
    return pg_server


_made = [0]


class Storage:
    """One storage under test: ``open()`` makes a handle on it (as another host would)."""

    def __init__(self, opener: Callable[[], Any], corrupt: Callable[[str], None]) -> None:
        self.opener = opener
        self.corrupt = corrupt  # write a stored context that does not read (by hand)
        self.s = OnlyStore(opener())
        self.other = OnlyStore(opener())

    def open(self) -> Any:
        return OnlyStore(self.opener())


@pytest.fixture(params=["files", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "files":
        paths = Paths(tmp_path / "home")

        def corrupt_file(bare: str) -> None:
            paths.context_file(bare).write_text("format = 1\nname = 'nonsense\n")

        return Storage(lambda: TomlStore(paths), corrupt_file)
    pg = request.getfixturevalue("pg")
    _made[0] += 1
    db = f"contexts{_made[0]}"
    pg.psql(f"CREATE DATABASE {db} OWNER hostctl")
    dsn = f"host=127.0.0.1 port={pg.port} dbname={db} user=hostctl password={SECRET}"
    cluster.init(dsn)

    def corrupt_row(bare: str) -> None:
        pg.psql(f"UPDATE hostctl_contexts SET document = '{{\"format\": \"seven\"}}' "
                f"WHERE name = '{bare}'", database=db)

    return Storage(lambda: PgStore(dsn), corrupt_row)


@pytest.fixture
def pg_only(request: pytest.FixtureRequest) -> bool:
    """Whether the store under test is the database (one transaction per take)."""
    return "postgresql" in request.node.callspec.id


def topology(s: Any) -> None:
    s.save("@srv", {"http_service_type": "nginx"}, "server")
    s.save("@plat", {"root": "/var/www/plat", "web_server": "@srv"}, "platform")
    s.save("@a.example", {"platform": "@plat", "aliases": "www.a.example"}, "site")


def test_the_implementations_have_every_call() -> None:
    for impl in (TomlStore, PgStore):
        missing = {m for m in members(ContextStore) if not callable(getattr(impl, m, None))}
        assert missing == set(), impl


def test_a_save_is_read_back_by_any_handle(store: Storage) -> None:
    made = store.s.save("@srv", {"http_port": "8080"}, "server")
    assert made.created and made.changed == ("http_port",)
    got = store.other.get("@srv")
    assert got.type == "server" and got.get("http_port") == 8080
    assert got.to_json() == made.context.to_json()
    assert store.other.exists("srv") and not store.other.exists("@nope")
    assert store.other.names() == ["srv"]
    assert [c.name for c in store.other.of_type("server")] == ["srv"]
    assert store.other.of_type("site") == []


def test_updates_merge_and_null_resets(store: Storage) -> None:
    store.s.save("@srv", {"http_port": "8080", "remote_host": "web1.example.org"}, "server")
    again = store.other.save("@srv", {"http_port": "null"})
    assert not again.created and again.changed == ("http_port",)
    got = store.s.get("@srv")
    assert got.get("remote_host") == "web1.example.org" and got.get("http_port") == 80
    assert got.created == store.other.get("@srv").created


def test_types_and_references_are_checked(store: Storage) -> None:
    with pytest.raises(InvalidInput, match="context_type"):
        store.s.save("@srv", {})
    topology(store.s)
    with pytest.raises(Conflict, match="is a server"):
        store.s.save("@srv", {}, "platform")
    with pytest.raises(NotFound):
        store.s.save("@b.example", {"platform": "@nope"}, "site")
    with pytest.raises(InvalidInput, match="not a platform"):
        store.s.save("@b.example", {"platform": "@srv"}, "site")
    with pytest.raises(Conflict, match="exists already"):
        store.s.save("@srv", {}, "server", create_only=True)
    assert sorted(store.other.names()) == ["a.example", "plat", "srv"]


def test_what_is_referred_to_cannot_be_deleted(store: Storage) -> None:
    topology(store.s)
    with pytest.raises(Conflict, match="referred to by @a.example"):
        store.other.delete("@plat")
    assert [c.name for c in store.other.referrers("@plat")] == ["a.example"]
    assert store.s.delete("@a.example").name == "a.example"
    store.s.delete("@plat")
    with pytest.raises(NotFound):
        store.other.get("@plat")
    with pytest.raises(NotFound):
        store.other.delete("@plat")


def test_no_two_sites_claim_one_host_name(store: Storage) -> None:
    topology(store.s)
    with pytest.raises(Conflict, match="www.a.example is taken by @a.example"):
        store.other.save("@b.example", {"platform": "@plat", "aliases": "WWW.a.example"},
                         "site")
    with pytest.raises(InvalidInput, match="own uri"):
        store.other.save("@b.example", {"platform": "@plat", "aliases": "b.example"}, "site")
    store.other.save("@b.example", {"platform": "@plat", "aliases": "www.b.example"}, "site")
    store.s.save("@a.example", {"aliases": "null"})  # a.example lets its alias go ...
    store.other.save("@c.example", {"platform": "@plat", "aliases": "www.a.example"},
                     "site")  # ... and another site may take it


def test_a_checked_save_writes_nothing(store: Storage) -> None:
    topology(store.s)
    ctx = store.s.check_save("@a.example", {"language": "fr"})
    assert ctx.get("language") == "fr"
    assert store.other.get("@a.example").get("language") != "fr"
    with pytest.raises(InvalidInput):
        store.s.check_save("@a.example", {"redirection": "maybe"})


def test_an_unreadable_context_is_malformed_and_passed_over_on_request(
        store: Storage) -> None:
    topology(store.s)
    store.corrupt("srv")
    with pytest.raises(MalformedFile):
        store.other.get("@srv")
    with pytest.raises(MalformedFile):
        store.other.of_type("server")
    bad: list[MalformedFile] = []
    assert [c.name for c in store.other.of_type(None, bad)] == ["a.example", "plat"]
    assert len(bad) == 1 and "srv" in bad[0].message


FIELDS = ["language", "profile", "client_name", "install_method", "admin_email",
          "cron_key"]
VALUES = {"language": "fr", "profile": "standard", "client_name": "acme",
          "install_method": "profile", "admin_email": "ops@a.example",
          "cron_key": "k" * 16}


def _save_one(opener: Callable[[], Any], field: str, go: Any, out: Any) -> None:
    go.wait(30)
    try:
        opener().save("@a.example", {field: VALUES[field]})
        out.put((field, "ok"))
    except Exception as exc:  # the parent asserts on what was reported
        out.put((field, f"{type(exc).__name__}: {exc}"))


def test_saves_at_once_from_many_processes_lose_no_change(store: Storage) -> None:
    topology(store.s)
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_save_one, args=(store.opener, f, go, out)) for f in FIELDS]
    for p in procs:
        p.start()
    go.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert results == {f: "ok" for f in FIELDS}
    got = store.other.get("@a.example")
    assert {f: got.get(f) for f in FIELDS} == VALUES


def _claim(opener: Callable[[], Any], n: int, go: Any, out: Any) -> None:
    go.wait(30)
    try:
        opener().save(f"@s{n}.example", {"platform": "@plat", "aliases": "shared.example"},
                      "site")
        out.put(n)
    except Conflict:
        out.put(-1)


def test_of_sites_claiming_one_name_at_once_exactly_one_wins(store: Storage) -> None:
    topology(store.s)
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(store.opener, n, go, out)) for n in range(6)]
    for p in procs:
        p.start()
    go.set()
    won = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    winners = [n for n in won if n >= 0]
    assert len(winners) == 1, won
    assert [c.name for c in store.other.of_type("site")] == ["a.example",
                                                             f"s{winners[0]}.example"]


def test_contexts_taken_from_another_store_arrive_whole_once(store: Storage,
                                                             tmp_path: Path) -> None:
    source = TomlStore(Paths(tmp_path / "elsewhere"))
    topology(source)
    source.save("@b.example", {"platform": "@plat", "language": "fr"}, "site")
    report = store.s.take(source.of_type())
    assert sorted(report.taken) == ["a.example", "b.example", "plat", "srv"]
    assert report.already == ()
    for ctx in source.of_type():
        got = store.other.get(ctx.name)
        assert got.to_json() == ctx.to_json()  # values and times as they were
    again = store.s.take(source.of_type())
    assert again.taken == () and len(again.already) == 4


def test_a_take_that_disagrees_or_dangles_is_refused(store: Storage, pg_only: bool,
                                                     tmp_path: Path) -> None:
    here = store.s
    here.save("@srv", {"http_service_type": "nginx"}, "server")
    here.save("@plat", {"root": "/var/www/plat", "web_server": "@srv"}, "platform")
    here.save("@a.example", {"platform": "@plat", "language": "de"}, "site")
    source = TomlStore(Paths(tmp_path / "elsewhere"))
    topology(source)  # the same server and platform; @a.example differs
    source.save("@srv0", {}, "server")  # new: taken first (servers come first)
    with pytest.raises(Conflict, match="@a.example is on both sides and differs"):
        here.take(source.of_type())
    # the database takes all or nothing; the files keep what came before the refusal
    assert ("srv0" in store.other.names()) is not pg_only
    dangling = TomlStore(Paths(tmp_path / "dangling"))
    dangling.save("@srv9", {}, "server")
    dangling.save("@plat9", {"root": "/var/www/p9", "web_server": "@srv9"}, "platform")
    dangling.save("@z.example", {"platform": "@plat9"}, "site")
    sites = [c for c in dangling.of_type() if c.type != "platform"]  # not its platform
    with pytest.raises(NotFound, match="@plat9"):
        here.take(sites)
    assert ("srv9" in store.other.names()) is not pg_only


def test_the_database_restarted_between_calls_is_reconnected(pg: PgCluster,
                                                             tmp_path: Path) -> None:
    _made[0] += 1
    db = f"contexts{_made[0]}"
    pg.psql(f"CREATE DATABASE {db} OWNER hostctl")
    dsn = f"host=127.0.0.1 port={pg.port} dbname={db} user=hostctl password={SECRET}"
    cluster.init(dsn)
    s = PgStore(dsn)
    topology(s)
    pg.restart()
    assert s.get("@a.example").get("platform") == "@plat"  # read: made again, run again
    pg.restart()
    s.save("@a.example", {"language": "fr"})  # write: the lost connection found first
    assert PgStore(dsn).get("@a.example").get("language") == "fr"
