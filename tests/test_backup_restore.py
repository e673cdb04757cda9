"""Backups that restore: what a backup takes of a site folder (links inside it, relative
or absolute; links out of it, loops, FIFOs, sockets left out and listed), the same
checker on both sides, archives of the previous version (absolute links, FIFOs) restored
safely, and hostile archives refused before anything is extracted. Real sites on a real
nginx with SQLite, through the real tasks; hostile archives are built with tarfile."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionhelpers import Lab, NginxServer, secrets_of, start_nginx, world_readable_dir

from hostctl.errors import MalformedFile
from hostctl.provision.backup import MANIFEST, Archive, open_tar, plan


@pytest.fixture(scope="module")
def nginx() -> Iterator[NginxServer]:
    server = start_nginx(world_readable_dir("hostctl-nginx-"))
    yield server
    server.stop()


@pytest.fixture
def lab(run_hostctl, home: Path, nginx: NginxServer, request) -> Iterator[Lab]:
    www = world_readable_dir("hostctl-www-")
    lab = Lab(run_hostctl, home, www, nginx, "br-" + request.node.name.lower()[:40])
    lab.server()
    lab.platform()
    yield lab
    lab.close()


def kinds(top: Path) -> dict[str, str]:
    """Every entry under ``top``: a file's content, a link's target, or 'dir'."""
    out = {}
    for entry in sorted(top.rglob("*")):
        rel = str(entry.relative_to(top))
        if entry.is_symlink():
            out[rel] = "-> " + os.readlink(entry)
        elif entry.is_dir():
            out[rel] = "dir"
        elif entry.is_file():
            out[rel] = entry.read_text()
        else:
            out[rel] = "special"
    return out


def hostile_site(site_path: Path, outside: Path) -> None:
    """A site folder with every kind of entry an application may leave in it."""
    files = site_path / "files"
    files.mkdir()
    (files / "data.txt").write_text("the data\n")
    (files / "sub").mkdir()
    (files / "sub" / "deep.txt").write_text("deep\n")
    (files / "rel-link").symlink_to("data.txt")
    (files / "sub" / "up-link").symlink_to("../data.txt")
    (files / "dir-link").symlink_to("sub")
    (files / "abs-link").symlink_to(site_path / "files" / "sub" / "deep.txt")
    (files / "abs-dir-link").symlink_to(site_path / "files")
    (files / "dangling").symlink_to("not-there")
    (files / "out-abs").symlink_to(outside)
    (files / "out-rel").symlink_to("../../../../../../../../../../etc/passwd")
    (files / "self").symlink_to(".")
    (files / "out-through-link").symlink_to("self/../..")  # real path: above the site
    (files / "loop-a").symlink_to("loop-b")
    (files / "loop-b").symlink_to("loop-a")
    os.mkfifo(files / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(files / "app.sock"))


SKIPPED = {"files/out-abs", "files/out-rel", "files/out-through-link", "files/loop-a",
           "files/loop-b", "files/pipe", "files/app.sock"}


def test_a_site_with_links_fifos_and_sockets_backs_up_and_restores(
        lab: Lab, tmp_path: Path) -> None:
    site = lab.site("@odd.example")
    lab.must("install", site)
    site_path = lab.www / "plat" / "sites" / "odd.example"
    hostile_site(site_path, tmp_path)
    before = kinds(site_path)

    doc = lab.must("backup", site, status="warning")
    result = doc["result"]
    assert {e["path"] for e in result["backup_skipped"]} == SKIPPED
    by_path = {e["path"]: e for e in result["backup_skipped"]}
    assert by_path["files/out-abs"]["target"] == str(tmp_path)
    assert by_path["files/pipe"]["type"] == "FIFO"
    assert by_path["files/app.sock"]["type"] == "socket"
    assert "loop" in by_path["files/loop-a"]["why"]
    assert any("not in the backup" in w for w in result["warnings"])
    made = Path(result["file"])
    with open_tar(made) as tar:
        meta = json.load(tar.extractfile(MANIFEST))  # type: ignore[arg-type]
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert {e["path"] for e in meta["skipped"]} == SKIPPED
    assert meta["site_path"] == str(site_path)
    # absolute links into the site are stored relative: they point into the restored copy
    assert links["files/files/abs-link"] == "../files/sub/deep.txt"
    assert links["files/files/abs-dir-link"] == "../files"
    assert not any(t.startswith("/") for t in links.values())

    (site_path / "files" / "data.txt").write_text("changed\n")
    # the backup made before the restore leaves out the same entries, and says so
    lab.must("restore", site, status="warning", file=made.name)
    after = kinds(site_path)
    expected = {k: v for k, v in before.items() if k not in SKIPPED}
    expected["files/abs-link"] = "-> ../files/sub/deep.txt"
    expected["files/abs-dir-link"] = "-> ../files"
    assert after == expected
    assert (site_path / "files" / "abs-link").read_text() == "deep\n"
    assert (site_path / "files" / "dir-link" / "up-link").resolve() == \
        (site_path / "files" / "data.txt")

    # the clone's absolute link lands in the clone, not in the original
    lab.must("clone", site, new_uri="odd2.example")
    copy = lab.www / "plat" / "sites" / "odd2.example"
    assert (copy / "files" / "abs-link").resolve() == copy / "files" / "sub" / "deep.txt"

    # the backup delete keeps as the only copy restores into a new installation
    os.mkfifo(site_path / "files" / "pipe")
    (site_path / "files" / "out-abs").symlink_to(tmp_path)
    lab.must("disable", site)
    last = Path(lab.must("delete", site, status="warning")["result"]["backup_file"])
    lab.site("@odd.example")
    lab.must("install", site)
    lab.must("restore", site, file=last.name)
    assert kinds(site_path) == expected


def legacy_archive(path: Path, site_path: Path, uri: str, site: str, db: Path) -> None:
    """An archive as the previous version wrote it: tar.add of every entry (absolute
    links and FIFOs kept as they are), no site folder or skipped list in the manifest."""
    doc = {"format": 1, "site": site, "uri": uri, "installed": "x", "platform": "@plat",
           "created": "2024-01-01T00:00:00Z", "reason": "delete", "db_type": "sqlite",
           "dump": "database.sqlite"}
    with tarfile.open(path, "w:gz") as tar:
        data = json.dumps(doc).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(db, arcname="database.sqlite")
        tar.add(site_path, arcname="files", recursive=False)
        for entry in sorted(site_path.rglob("*")):
            if stat.S_ISSOCK(entry.lstat().st_mode):
                continue  # tarfile never stored sockets
            tar.add(entry, arcname="files/" + str(entry.relative_to(site_path)),
                    recursive=False)


def test_a_previous_versions_archive_with_absolute_links_and_a_fifo_restores(
        lab: Lab, tmp_path: Path) -> None:
    site = lab.site("@old.example")
    lab.must("install", site)
    site_path = lab.www / "plat" / "sites" / "old.example"
    hostile_site(site_path, tmp_path)
    before = kinds(site_path)
    (lab.home / "backups").mkdir(mode=0o700, exist_ok=True)
    old = lab.home / "backups" / "old.example-20240101.000000.tar.gz"
    legacy_archive(old, site_path, "old.example", "@old.example",
                   Path(secrets_of(lab.home, site)["db"]["path"]))
    if hasattr(tarfile, "data_filter"):  # what made it unrestorable before (3.11.4+)
        with pytest.raises(tarfile.TarError), tarfile.open(old) as tar:
            tar.extractall(tmp_path / "x", filter="data")

    doc = lab.must("restore", site, status="warning", file=old.name)
    after = kinds(site_path)
    expected = {k: v for k, v in before.items() if k not in SKIPPED}
    expected["files/abs-link"] = "-> ../files/sub/deep.txt"
    expected["files/abs-dir-link"] = "-> ../files"
    assert after == expected
    log = lab.log(doc["id"])
    for left_out in ("files/out-abs", "files/pipe", "files/out-through-link"):
        assert left_out in log, log


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


ROOT = member("files", tarfile.DIRTYPE)


@pytest.mark.parametrize("members, reason", [
    ([member("files/../evil")], "not a plain relative name"),
    ([member("files/a/../../evil")], "not a plain relative name"),
    ([member("files//evil")], "not a plain relative name"),
    ([member("files/./evil")], "not a plain relative name"),
    ([member("files/l", tarfile.SYMTYPE, "sub"), member("files/sub", tarfile.DIRTYPE),
      member("files/l/x")], "'files/l' is not a folder"),
    ([member("files/f"), member("files/f/x")], "'files/f' is not a folder"),
    ([member("files/a/x")], "'files/a' is not a folder"),
    ([member("files/h", tarfile.LNKTYPE, "/etc/passwd")], "hard link"),
    ([member("files/h", tarfile.LNKTYPE, "files/later"), member("files/later")],
     "hard link"),
    ([member("files/x"), member("files/x")], "twice"),
    ([member("files/c", b"Q")], "unsupported type"),
])
def test_hostile_archives_are_refused_before_anything_is_extracted(
        members: list[tarfile.TarInfo], reason: str, tmp_path: Path) -> None:
    with pytest.raises(MalformedFile, match=reason.replace("(", r"\(")):
        plan([ROOT, *members], {"uri": "a.example"})
    path = tmp_path / "evil.tar.gz"
    doc = json.dumps({"format": 1, "site": "@a.example", "uri": "a.example"}).encode()
    with tarfile.open(path, "w:gz") as tar:
        for info in [member(MANIFEST), ROOT, *members]:
            body = doc if info.name == MANIFEST else b"x"
            info.size = len(body) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(body) if info.isreg() else None)
    with Archive(path) as archive, pytest.raises(MalformedFile):
        archive.extract_files(tmp_path / "site")
    assert not (tmp_path / "site").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]


@pytest.mark.parametrize("links, left_out", [
    ({"files/x": "/etc"}, {"x"}),
    ({"files/x": "../.."}, {"x"}),
    ({"files/x": "sub/../.."}, {"x"}),
    ({"files/s": ".", "files/x": "s/.."}, {"x"}),  # above the folder once s is followed
    ({"files/d": "sub/..", "files/x": "d/.."}, {"x"}),
    ({"files/s": "sub", "files/sub/u": "..", "files/x": "s/u/.."}, {"x"}),
    ({"files/a": "b", "files/b": "a"}, {"a", "b"}),
    ({"files/a": "b/c", "files/b": "a/.."}, {"a", "b"}),
    ({"files/x": "/srv/other/sites/a.example.org/y"}, {"x"}),  # another site's folder
    ({"files/x": "sub/../sub", "files/y": "x/../../files-not"}, {"y"}),
])
def test_links_that_leave_the_folder_are_left_out(links: dict[str, str],
                                                  left_out: set[str]) -> None:
    members = [ROOT, member("files/sub", tarfile.DIRTYPE)]
    members += [member(name, tarfile.SYMTYPE, target) for name, target in links.items()]
    checked = plan(members, {"uri": "a.example"})
    assert {s.path for s in checked.skipped} == left_out
    assert {m.name for m, _ in checked.links} == {n for n in links
                                                  if n[len("files/"):] not in left_out}


def test_a_legacy_absolute_link_into_the_site_is_made_relative() -> None:
    members = [ROOT, member("files/sub", tarfile.DIRTYPE),
               member("files/sub/l", tarfile.SYMTYPE, "/var/www/p/sites/a.example/f"),
               member("files/top", tarfile.SYMTYPE, "/var/www/p/sites/a.example")]
    checked = plan(members, {"uri": "a.example"})
    assert [(m.name, t) for m, t in checked.links] == [("files/sub/l", "../f"),
                                                       ("files/top", ".")]
    named = plan(members, {"uri": "a.example", "site_path": "/var/www/p/sites/a.example"})
    assert len(named.links) == 2 and not named.skipped


def test_modes_are_masked_and_owners_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "modes.tar.gz"
    doc = json.dumps({"format": 1, "site": "@a.example", "uri": "a.example"}).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = member(MANIFEST)
        info.size = len(doc)
        tar.addfile(info, io.BytesIO(doc))
        root = member("files", tarfile.DIRTYPE)
        root.mode = 0o777
        tar.addfile(root)
        for name, mode in (("setuid", 0o4777), ("private", 0o400), ("script", 0o750)):
            info = member("files/" + name)
            info.mode, info.size, info.uid, info.gid = mode, 1, 4242, 4242
            tar.addfile(info, io.BytesIO(b"x"))
        folder = member("files/shared", tarfile.DIRTYPE)
        folder.mode = 0o3777
        tar.addfile(folder)
    with Archive(path) as archive:
        archive.extract_files(tmp_path / "site")
    site = tmp_path / "site"
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in [site, *site.iterdir()]}
    assert modes == {"site": 0o755, "setuid": 0o755, "private": 0o600, "script": 0o750,
                     "shared": 0o755}
    assert {p.lstat().st_uid for p in site.iterdir()} == {os.geteuid()}


def test_the_suites_restore_check_catches_an_archive_restore_would_change(
        tmp_path: Path) -> None:
    """The check every test ends with (conftest.every_backup_restores) reports a
    current-format archive that restore refuses or would leave something out of."""
    from conftest import backups_that_would_not_restore

    top = tmp_path / "deep" / "er"
    folder = top / "home" / "backups"
    folder.mkdir(parents=True)

    def archive(name: str, doc: dict[str, object], *members: tarfile.TarInfo) -> None:
        data = json.dumps({"format": 1, "site": "@a.example", "uri": "a.example",
                           **doc}).encode()
        with tarfile.open(folder / name, "w:gz") as tar:
            info = member(MANIFEST)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for m in (ROOT, *members):
                tar.addfile(m)

    archive("fifo.tar.gz", {"skipped": []}, member("files/p", tarfile.FIFOTYPE))
    archive("escape.tar.gz", {"skipped": []}, member("files/x", tarfile.SYMTYPE, "../.."))
    archive("refused.tar.gz", {"skipped": []}, member("files/a/b", tarfile.DIRTYPE))
    archive("good.tar.gz", {"skipped": []}, member("files/d", tarfile.DIRTYPE))
    archive("legacy.tar.gz", {}, member("files/p", tarfile.FIFOTYPE))
    (folder / "junk.tar.gz").write_bytes(b"not an archive")
    problems = backups_that_would_not_restore(top)
    assert [p.split(":")[0] for p in problems] == ["escape.tar.gz", "fifo.tar.gz",
                                                   "refused.tar.gz"], problems
    assert "leaves out files/p" not in problems[0] and "leaves out p" in problems[1]


@pytest.mark.parametrize("order", [1, -1])
def test_long_chains_of_links_are_judged_alike_in_any_order(order: int) -> None:
    """3000 links in a chain: no recursion error; a link that reaches a folder through
    at most 40 links is kept, the rest left out (Linux's own limit), whatever the
    archive's order; links whose follows double at each step are cut as early."""
    chain = [member(f"files/c{i}", tarfile.SYMTYPE, f"c{i + 1}") for i in range(3000)]
    chain.append(member("files/c3000", tarfile.SYMTYPE, "d"))
    doubling = [member("files/a1", tarfile.SYMTYPE, "d")]
    doubling += [member(f"files/a{i}", tarfile.SYMTYPE, f"a{i - 1}/../a{i - 1}")
                 for i in range(2, 300)]
    links = (chain + doubling)[::order]
    checked = plan([ROOT, member("files/d", tarfile.DIRTYPE), *links], {})
    kept = {m.name for m, _ in checked.links}
    assert kept == {f"files/c{i}" for i in range(2961, 3001)} | \
        {f"files/a{i}" for i in range(1, 6)}
    assert {s.why for s in checked.skipped} == {"it leads through more than 40 links"}
