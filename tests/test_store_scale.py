"""The context store at hosting scale: the listing cache, the host name index's watch, and a
dispatch pass with nothing due (no work per site). Costs are counted (files read, system
calls on context files), never timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostctl.contexts import store as store_mod
from hostctl.contexts.store import Context, TomlStore, decode_document, render
from hostctl.errors import Conflict, MalformedFile
from hostctl.paths import Paths
from hostctl.provision import layout
from hostctl.runners.dispatcher import Dispatcher
from hostctl.runners.home import Home

SITES = [f"s{n}.example" for n in range(6)]


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files changed a moment ago are trusted (the tests move mtimes on by hand instead)."""
    monkeypatch.setattr(store_mod, "RACY_NS", 0)


def new_home(path: Path) -> Home:
    home = Home(Paths(path))
    home.paths.ensure_home()
    store = home.store
    store.save("@srv", {}, "server")
    store.save("@plat", {"root": "/srv/www", "web_server": "@srv"}, "platform")
    return home


def fresh(folder: Path) -> tuple[list[Context], list[str]]:
    """Every context read straight from its file, by name, and the malformed ones."""
    found, bad = [], []
    for path in sorted(folder.glob("*.toml")):
        try:
            found.append(decode_document(path.stem, tomllib.loads(path.read_text())))
        except (ValueError, MalformedFile):
            bad.append(path.stem)
    return found, bad


def listed(store: TomlStore) -> tuple[list[tuple[Context, str]], list[str]]:
    malformed: list[MalformedFile] = []
    out = [(one.context, one.json) for one in store.listing(None, malformed)]
    return out, sorted(m.message.split("/")[-1].split(".toml")[0] for m in malformed)


def assert_listing_is_fresh(folder: Path, store: TomlStore) -> None:
    expected, bad = fresh(folder)
    got, got_bad = listed(store)
    assert [c for c, _ in got] == expected
    assert [text for _, text in got] == [render(c) for c in expected]
    assert got_bad == bad
    malformed: list[MalformedFile] = []
    assert store.of_type("site", malformed) == [c for c in expected if c.type == "site"]


def move_on(path: Path) -> None:
    """Give a file edited in place an mtime of its own, as time passing would."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_007))


def hand_edit(path: Path, **fields: object) -> None:
    doc = tomllib.loads(path.read_text())
    doc["fields"].update(fields)
    with open(path, "r+") as fh:  # in place, as some editors write
        fh.write(tomli_w.dumps(doc))
        fh.truncate()
    move_on(path)


OPS = st.lists(st.tuples(
    st.sampled_from(["save", "alias", "delete", "hand", "garbage", "damage", "list",
                     "other"]),
    st.sampled_from(SITES), st.integers(0, 5)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_the_cached_listing_always_equals_a_fresh_read(
        tmp_path_factory: pytest.TempPathFactory, trusting: None,
        ops: list[tuple[str, str, int]]) -> None:
    home = new_home(tmp_path_factory.mktemp("h") / "home")
    folder = home.paths.contexts
    cache = folder / store_mod.LISTING
    kept = home.store
    assert isinstance(kept, TomlStore)
    for op, site, n in ops:
        path = folder / f"{site}.toml"
        if op == "save":
            try:
                kept.save(f"@{site}", {"platform": "@plat", "language": f"l{n}"}, "site")
            except MalformedFile:
                path.unlink()  # garbage: saved afresh
                kept.save(f"@{site}", {"platform": "@plat", "language": f"l{n}"}, "site")
        elif op == "alias" and path.exists():
            try:
                kept.save(f"@{site}", {"aliases": f"www{n}.example"})
            except (Conflict, MalformedFile):
                pass
        elif op == "delete" and path.exists():
            try:
                kept.delete(f"@{site}")
            except MalformedFile:
                path.unlink()
        elif op == "hand" and path.exists():
            try:
                hand_edit(path, language=f"hand{n}" * (n + 1))
            except ValueError:
                pass  # a garbage file: nothing to edit
        elif op == "garbage":
            path.write_bytes(b"not = [toml")
            move_on(path)
        elif op == "damage" and cache.exists():
            raw = cache.read_bytes()
            cut = [raw[: len(raw) * n // 6], raw.replace(b"site", b"sit", 1),
                   raw.replace(b'"platform"', b'"server"', 1), b"\xff" * n, b"{}\n",
                   raw + b"x"][n]
            cache.write_bytes(cut)
        elif op == "other":
            (folder / "notes.txt").write_text("a stray file")
        # the kept store, a new one (another process), and the kept one again
        assert_listing_is_fresh(folder, kept)
        assert_listing_is_fresh(folder, TomlStore(home.paths))


def test_a_file_edited_in_place_within_the_clock_tick_is_never_hidden(
        tmp_path: Path) -> None:
    """Without the test's help (real RACY_NS): a file listed just after it was written is
    not trusted, so an edit in place of the same size and (possibly) the same mtime is
    seen; the folder's identity is not recorded while it is that fresh either."""
    home = new_home(tmp_path / "home")
    store = home.store
    store.save("@a.example", {"platform": "@plat", "language": "en"}, "site")
    assert isinstance(store, TomlStore)
    first = store.listing("site")
    assert first[0].context.get("language") == "en"
    path = home.paths.contexts / "a.example.toml"
    before = path.stat()
    text = path.read_text()
    with open(path, "r+") as fh:
        fh.write(text.replace('"en"', '"fr"'))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same tick
    assert path.stat().st_size == before.st_size
    for reader in (store, TomlStore(home.paths)):
        assert reader.listing("site")[0].context.get("language") == "fr"
    head = json.loads((home.paths.contexts / store_mod.LISTING).read_bytes().split(b"\n")[1])
    assert head["folder"] is None
    assert ["a.example", None] in head["contexts"]


def test_a_context_read_in_its_clock_tick_is_not_trusted_later_by_the_same_process(
        tmp_path: Path) -> None:
    """A long-lived process (the daemon, a bulk import) read a context the moment it was
    written; long after, it lists from what it read then: that file is still untrusted in
    the cache it writes, since an edit in place within the tick of that read keeps the
    file's identity (real RACY_NS; the wait is for the clock, nothing is timed)."""
    home = new_home(tmp_path / "home")
    home.store.save("@a.example", {"platform": "@plat", "language": "en"}, "site")
    kept = TomlStore(home.paths)
    assert kept.get("@a.example").get("language") == "en"  # read within the tick
    time.sleep(store_mod.RACY_NS / 1e9 + 0.2)  # the file is old now; the read is not
    kept.listing("site")
    head = json.loads((home.paths.contexts / store_mod.LISTING).read_bytes().split(b"\n")[1])
    assert ["a.example", None] in head["contexts"]
    assert any(item[0] == "srv" and item[1] is not None for item in head["contexts"])


def test_a_listing_trusts_the_cache_and_reads_only_changed_files(
        tmp_path: Path, trusting: None, monkeypatch: pytest.MonkeyPatch) -> None:
    home = new_home(tmp_path / "home")
    store = home.store
    assert isinstance(store, TomlStore)
    for site in SITES:
        store.save(f"@{site}", {"platform": "@plat"}, "site")
    TomlStore(home.paths).listing()  # made
    reads: list[str] = []
    real = TomlStore._read

    def counting(self: TomlStore, bare: str) -> Context | None:
        reads.append(bare)
        return real(self, bare)

    monkeypatch.setattr(TomlStore, "_read", counting)
    assert len(TomlStore(home.paths).listing()) == len(SITES) + 2
    assert reads == []
    hand_edit(home.paths.contexts / "s2.example.toml", language="de")
    assert len(TomlStore(home.paths).listing()) == len(SITES) + 2
    assert reads == ["s2.example"]
    reads.clear()
    assert [c.get("language") for c in TomlStore(home.paths).of_type("site")][2] == "de"
    assert reads == []  # the listing wrote the cache again


def test_a_damaged_or_foreign_cache_is_rebuilt_and_only_the_owner_writes_it(
        tmp_path: Path, trusting: None) -> None:
    home = new_home(tmp_path / "home")
    folder = home.paths.contexts
    cache = folder / store_mod.LISTING
    store = TomlStore(home.paths)
    store.save("@a.example", {"platform": "@plat"}, "site")
    store.listing()
    store.listing()  # again: the first made .cache/, and so changed the folder
    good = cache.read_bytes()
    crc, head, body = good.split(b"\n", 2)
    doc = json.loads(head)
    # well-formed, but lying: another rendering of the same length, a newer format
    forged = body.replace(b'"@plat"', b'"@flat"', 1)
    newer = json.dumps({**doc, "format": 99}).encode() + b"\n" + body
    # written by another hostctl (an upgrade may render a context otherwise: a field made
    # secret must not be printed from an older cache)
    other = json.dumps({**doc, "renderer": "another"}).encode() + b"\n" + forged
    for junk in (b"", b"\n", b"[]\n", good[:-1], crc + b"\n" + head + b"\n" + forged,
                 b"%08x\n" % zlib.crc32(newer) + newer, b"%08x\n" % zlib.crc32(other) + other):
        cache.write_bytes(junk)
        assert_listing_is_fresh(folder, TomlStore(home.paths))
        assert cache.read_bytes() == good  # rebuilt
    cache.unlink()
    os.mkfifo(cache)  # never a hang
    assert_listing_is_fresh(folder, TomlStore(home.paths))
    cache.unlink()
    # a reader that is not the home's owner leaves it alone
    os.chown(folder, 65534, 65534)
    try:
        assert_listing_is_fresh(folder, TomlStore(home.paths))
        assert not cache.exists()
    finally:
        os.chown(folder, os.getuid(), os.getgid())


WRITER = """
import sys
from pathlib import Path
from hostctl.contexts import store as store_mod
from hostctl.contexts.store import TomlStore
from hostctl.errors import Conflict, NotFound
from hostctl.paths import Paths
store_mod.RACY_NS = 0
store = TomlStore(Paths(Path(sys.argv[1])))
me = int(sys.argv[2])
for i in range(30):
    site = f"@w{(me * 7 + i) % 12}.example"
    try:
        if i % 5 == 4:
            store.delete(site)
        else:
            store.save(site, {"platform": "@plat", "language": f"p{me}i{i}"}, "site")
    except (Conflict, NotFound):
        pass
    if i % 3 == 0:
        TomlStore(Paths(Path(sys.argv[1]))).listing()  # writes the cache, racing the others
"""


def test_concurrent_writers_and_listers_never_leave_a_wrong_cache(
        tmp_path: Path, trusting: None) -> None:
    home = new_home(tmp_path / "home")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(home.paths.home), str(n)])
             for n in range(4)]
    try:
        while any(p.poll() is None for p in procs):
            TomlStore(home.paths).listing()
    finally:
        for p in procs:
            assert p.wait(timeout=120) == 0
    assert_listing_is_fresh(home.paths.contexts, TomlStore(home.paths))
    # and the cache as the last writer left it, without any file read again
    for path in home.paths.contexts.glob("*.toml"):
        move_on(path)
    assert_listing_is_fresh(home.paths.contexts, TomlStore(home.paths))


# -- the host name index in a process that saves many ------------------------------------

def test_a_bulk_save_watches_the_folder_and_still_sees_hand_edits(
        tmp_path: Path, trusting: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "INDEX_WATCH_FROM", 5)
    home = new_home(tmp_path / "home")
    store = home.store
    assert isinstance(store, TomlStore)
    for n in range(8):
        store.save(f"@b{n}.example", {"platform": "@plat"}, "site")
    assert store._index_watch is not None
    folder = str(home.paths.contexts)
    stats: list[str] = []
    real_stat = os.stat

    def counting(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        if str(path).startswith(folder + "/") and str(path).endswith(".toml"):
            stats.append(str(path))
        return real_stat(path, *args, **kw)

    monkeypatch.setattr(store_mod.os, "stat", counting)
    store.save("@b8.example", {"platform": "@plat"}, "site")
    assert len(stats) <= 4, stats  # its own file, never every one
    hand_edit(home.paths.contexts / "b3.example.toml", aliases=["hand.example"])
    with pytest.raises(Conflict, match="taken by @b3.example"):
        store.save("@b4.example", {"aliases": "HAND.example"})
    (home.paths.contexts / "b3.example.toml").unlink()  # removed by hand
    store.save("@b4.example", {"aliases": "hand.example"})
    with pytest.raises(Conflict, match="taken by @b4.example"):
        TomlStore(home.paths).save("@b5.example", {"aliases": "hand.example"})


# -- a dispatch pass with nothing due ------------------------------------------------------

@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What a pass reads of the sites: context files, listings, installed checks."""
    seen: list[str] = []
    real_read, real_list = TomlStore._read, TomlStore._list_all

    def read(self: TomlStore, bare: str) -> Context | None:
        seen.append(f"read {bare}")
        return real_read(self, bare)

    def list_all(self: TomlStore) -> Any:
        seen.append("listing")
        return real_list(self)

    monkeypatch.setattr(TomlStore, "_read", read)
    monkeypatch.setattr(TomlStore, "_list_all", list_all)
    from hostctl.provision.secrets import FileSecrets
    real_installed = FileSecrets.installed

    def installed(self: FileSecrets, site: str) -> bool:
        seen.append(f"installed {site}")
        return real_installed(self, site)

    monkeypatch.setattr(FileSecrets, "installed", installed)
    yield seen


def dispatch(path: Path, clock: Callable[[], float]) -> list[str]:
    report = Dispatcher(Home(Paths(path)), clock=clock).run()
    return [q.name for q in report.queues if q.ran]


def test_a_dispatch_pass_with_nothing_due_reads_no_site(
        tmp_path: Path, trusting: None, counted: list[str]) -> None:
    home = new_home(tmp_path / "home")
    for n in range(20):
        home.store.save(f"@d{n}.example", {"platform": "@plat"}, "site")
    now = [1_900_000_000.0]
    first = dispatch(home.paths.home, lambda: now[0])
    assert "cron" in first and any(s.startswith("installed") for s in counted)
    doc = json.loads((home.paths.spool / "queues.json").read_text())
    assert doc["totals"]["cron"]["total"] == 0
    now[0] += 30
    dispatch(home.paths.home, lambda: now[0])  # counted again: the first made contexts/.cache
    for _ in range(3):
        now[0] += 30
        counted.clear()
        assert "cron" not in dispatch(home.paths.home, lambda: now[0])
        assert counted == []  # no site listed, read or looked at
    # a site installed: the secrets folder changed, the count is taken again
    layout.secrets_dir(home.paths).mkdir(mode=0o700, exist_ok=True)
    layout.secrets_file(home.paths, "d3.example").write_text("format = 1\n")
    now[0] += 30
    counted.clear()
    dispatch(home.paths.home, lambda: now[0])
    assert "listing" in counted
    doc = json.loads((home.paths.spool / "queues.json").read_text())
    assert doc["totals"]["backup"]["total"] == 1
    now[0] += 30
    counted.clear()
    dispatch(home.paths.home, lambda: now[0])
    assert counted == []
    # a save changes the contexts folder: counted again once
    home.store.save("@d99.example", {"platform": "@plat"}, "site")
    now[0] += 30
    counted.clear()
    dispatch(home.paths.home, lambda: now[0])
    assert "listing" in counted
