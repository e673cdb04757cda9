"""provision-save, context list/show/fields: fields, merging, references, files, secrets,
corrupted files, and a storm of concurrent writers on one context."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import hostctl_exe

from hostctl.errors import ExitStatus


def save(run_hostctl, *argv: str):
    return run_hostctl("provision-save", *argv)


def ok(result):
    assert result.code == 0, result
    return result


def stored(home: Path, bare: str) -> dict:
    return tomllib.loads((home / "contexts" / f"{bare}.toml").read_text())


def show_json(run_hostctl, name: str, *extra: str) -> dict:
    r = ok(run_hostctl("context", "show", name, "--json", *extra))
    return json.loads(r.out)


def one_line_error(result, code: int = ExitStatus.USAGE) -> str:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


@pytest.fixture
def topology(run_hostctl) -> None:
    """A server, a platform on it, and a site on the platform."""
    ok(save(run_hostctl, "@srv", "--context_type", "server", "--http_service_type", "nginx"))
    ok(save(run_hostctl, "@plat", "--context_type", "platform", "--root", "/var/www/plat",
            "--web_server", "@srv"))
    ok(save(run_hostctl, "@site.example", "--context_type", "site", "--platform", "@plat",
            "--db_server", "@srv"))


# -- creating, merging, resetting ---------------------------------------------------------


def test_create_each_type_and_show_every_field(run_hostctl, home: Path, topology) -> None:
    srv = show_json(run_hostctl, "@srv")
    assert srv["name"] == "@srv"
    assert srv["type"] == "server"
    assert srv["fields"]["http_service_type"] == "nginx"
    assert srv["fields"]["http_port"] == 80  # a default, shown
    plat = show_json(run_hostctl, "plat")
    assert plat["type"] == "platform"
    assert plat["fields"]["root"] == "/var/www/plat"
    assert plat["fields"]["web_server"] == "@srv"
    site = show_json(run_hostctl, "@site.example")
    assert site["type"] == "site"
    assert site["fields"]["platform"] == "@plat"
    assert site["fields"]["db_server"] == "@srv"
    assert site["fields"]["uri"] == "site.example"  # derived from the name
    assert site["fields"]["site_enabled"] is True
    for doc in (srv, plat, site):
        assert doc["created"].endswith("Z") and doc["updated"].endswith("Z")


def test_show_human_output_lists_every_field(run_hostctl, topology) -> None:
    r = ok(run_hostctl("context", "show", "@srv"))
    first = r.out.splitlines()[0]
    assert "@srv" in first and "server" in first
    fields = json.loads(ok(run_hostctl("context", "fields", "server", "--json")).out)["server"]
    for f in fields:
        assert f["name"] in r.out
    assert any("http_service_type" in line and "nginx" in line for line in r.out.splitlines())


def test_update_merges_and_keeps_earlier_fields(run_hostctl, home: Path) -> None:
    ok(save(run_hostctl, "@srv", "--context_type", "server", "--http_port", "8080"))
    created = stored(home, "srv")["created"]
    ok(save(run_hostctl, "@srv", "--remote_host", "web1.example.org"))
    ok(save(run_hostctl, "@srv", "--context_type", "server", "--db_service_type", "mysql"))
    doc = stored(home, "srv")
    assert doc["fields"] == {
        "http_port": 8080, "remote_host": "web1.example.org", "db_service_type": "mysql",
    }
    assert doc["created"] == created
    fields = show_json(run_hostctl, "@srv")["fields"]
    assert (fields["http_port"], fields["remote_host"]) == (8080, "web1.example.org")


def test_null_resets_a_field_to_its_default(run_hostctl, home: Path) -> None:
    ok(save(run_hostctl, "@srv", "--context_type", "server", "--http_port", "8080",
            "--ip_addresses", "10.0.0.1", "--remote_host", "web1.example.org"))
    ok(save(run_hostctl, "@srv", "--http_port", "null", "--ip_addresses", "null"))
    assert stored(home, "srv")["fields"] == {"remote_host": "web1.example.org"}
    fields = show_json(run_hostctl, "@srv")["fields"]
    assert fields["http_port"] == 80
    assert fields["ip_addresses"] == []
    assert fields["remote_host"] == "web1.example.org"


def test_null_cannot_reset_a_required_field(run_hostctl, home: Path, topology) -> None:
    before = (home / "contexts" / "plat.toml").read_bytes()
    line = one_line_error(save(run_hostctl, "@plat", "--root", "null"))
    assert "--root" in line
    assert (home / "contexts" / "plat.toml").read_bytes() == before


def test_both_spellings_of_every_option(run_hostctl, home: Path) -> None:
    ok(save(run_hostctl, "@srv", "--context-type", "server", "--http-port", "81",
            "--remote-host", "a.example.org"))
    ok(save(run_hostctl, "@srv", "--http_ssl_port=8443", "--db-port=5432"))
    assert stored(home, "srv")["fields"] == {
        "http_port": 81, "remote_host": "a.example.org", "http_ssl_port": 8443, "db_port": 5432,
    }


def test_create_needs_a_type_and_update_keeps_it(run_hostctl, home: Path) -> None:
    line = one_line_error(save(run_hostctl, "@new", "--http_port", "81"))
    assert "--context_type" in line or "--context-type" in line
    assert not (home / "contexts" / "new.toml").exists()
    ok(save(run_hostctl, "@srv", "--context_type", "server"))
    before = (home / "contexts" / "srv.toml").read_bytes()
    one_line_error(save(run_hostctl, "@srv", "--context_type", "platform", "--root", "/x"))
    one_line_error(save(run_hostctl, "@srv", "--context_type", "router"))
    assert (home / "contexts" / "srv.toml").read_bytes() == before


# -- refused values ---------------------------------------------------------------------


def test_a_global_option_after_the_command_is_refused_saying_where_it_goes(
        run_hostctl, home: Path) -> None:
    ok(save(run_hostctl, "@srv", "--context_type", "server"))
    before = (home / "contexts" / "srv.toml").read_bytes()
    for flag in ("-q", "-v"):
        line = one_line_error(save(run_hostctl, "@srv", "--admin_email", "a@b.c", flag))
        assert repr(flag) in line and "before the command" in line
        line = one_line_error(run_hostctl("provision-verify", "@srv", flag))
        assert "before the command" in line
    assert (home / "contexts" / "srv.toml").read_bytes() == before


def test_unknown_field_is_refused_with_the_known_ones(run_hostctl, home: Path) -> None:
    ok(save(run_hostctl, "@srv", "--context_type", "server"))
    before = (home / "contexts" / "srv.toml").read_bytes()
    line = one_line_error(save(run_hostctl, "@srv", "--colour", "red"))
    assert "colour" in line
    known = json.loads(ok(run_hostctl("context", "fields", "server", "--json")).out)["server"]
    assert len(known) > 5
    for f in known:
        assert f["name"] in line
    assert (home / "contexts" / "srv.toml").read_bytes() == before
    # a field of another type is unknown too
    assert "root" not in {f["name"] for f in known}
    one_line_error(save(run_hostctl, "@srv", "--root", "/var/www"))
    # and an unknown field on creation writes nothing
    one_line_error(save(run_hostctl, "@other", "--context_type", "server", "--colour", "red"))
    assert not (home / "contexts" / "other.toml").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("http_port", "eighty"),
        ("http_port", "8.5"),
        ("http_port", "70000"),
        ("http_port", "0"),
        ("protected", "maybe"),
        ("http_service_type", "iis"),
        ("aegir_root", "relative/path"),
        ("remote_host", "not a host"),
        ("web_group", "a\x07b"),
    ],
    ids=["port-word", "port-float", "port-high", "port-zero", "bool", "choice", "path",
         "host", "control-char"],
)
def test_bad_value_is_refused_and_the_file_kept(run_hostctl, home: Path, field, value) -> None:
    ok(save(run_hostctl, "@srv", "--context_type", "server", "--http_port", "8080"))
    before = (home / "contexts" / "srv.toml").read_bytes()
    line = one_line_error(save(run_hostctl, "@srv", f"--{field}={value}", "--db_port", "3306"))
    assert f"--{field}" in line
    assert (home / "contexts" / "srv.toml").read_bytes() == before


def test_bad_value_on_creation_writes_no_file(run_hostctl, home: Path) -> None:
    one_line_error(save(run_hostctl, "@srv", "--context_type", "server", "--http_port", "x"))
    assert not (home / "contexts" / "srv.toml").exists()


@pytest.mark.parametrize(
    ("word", "expected"),
    [("yes", True), ("no", False), ("true", True), ("false", False), ("1", True),
     ("0", False), ("on", True), ("off", False), ("YES", True), ("False", False)],
)
def test_boolean_spellings(run_hostctl, home: Path, word: str, expected: bool) -> None:
    ok(save(run_hostctl, "@srv", "--context_type", "server", "--protected", word))
    assert stored(home, "srv")["fields"]["protected"] is expected
    ok(save(run_hostctl, "@plat", "--context_type", "platform", "--root", "/srv/p",
            f"--locked={word}"))
    assert stored(home, "plat")["fields"]["locked"] is expected


def test_comma_lists(run_hostctl, home: Path, topology) -> None:
    ok(save(run_hostctl, "@srv", "--ip_addresses", "10.0.0.1, 10.0.0.2,,10.0.0.1 ,"))
    assert stored(home, "srv")["fields"]["ip_addresses"] == ["10.0.0.1", "10.0.0.2"]
    ok(save(run_hostctl, "@site.example", "--aliases", "www.site.example,old.site.example"))
    assert show_json(run_hostctl, "@site.example")["fields"]["aliases"] == [
        "www.site.example", "old.site.example"]
    # a list is replaced as a whole, not appended to
    ok(save(run_hostctl, "@site.example", "--aliases", "new.site.example"))
    assert stored(home, "site.example")["fields"]["aliases"] == ["new.site.example"]


def test_required_fields(run_hostctl, home: Path) -> None:
    line = one_line_error(save(run_hostctl, "@plat", "--context_type", "platform"))
    assert "--root" in line
    line = one_line_error(save(run_hostctl, "@site.example", "--context_type", "site"))
    assert "--platform" in line
    assert not list((home / "contexts").glob("*.toml"))


def test_references_must_exist_and_be_of_the_right_type(
    run_hostctl, home: Path, topology
) -> None:
    cases = [
        ("@s2.example", "--context_type", "site", "--platform", "@missing"),
        ("@s2.example", "--context_type", "site", "--platform", "@srv"),
        ("@s2.example", "--context_type", "site", "--platform", "@plat", "--db_server",
         "@plat"),
        ("@p2", "--context_type", "platform", "--root", "/srv/p2", "--web_server",
         "@site.example"),
    ]
    for argv in cases:
        line = one_line_error(save(run_hostctl, *argv))
        assert argv[-1] in line, (argv, line)
    assert sorted(p.stem for p in (home / "contexts").glob("*.toml")) == [
        "plat", "site.example", "srv"]
    # a valid reference, with or without '@'
    ok(save(run_hostctl, "@s2.example", "--context_type", "site", "--platform", "plat"))
    assert stored(home, "s2.example")["fields"]["platform"] == "@plat"


def test_delete_is_refused_while_referenced(run_hostctl, home: Path, topology) -> None:
    files = home / "contexts"
    line = one_line_error(save(run_hostctl, "@srv", "--delete"))
    assert "@plat" in line and "@site.example" in line
    line = one_line_error(save(run_hostctl, "@plat", "--delete"))
    assert "@site.example" in line
    assert (files / "srv.toml").exists() and (files / "plat.toml").exists()
    ok(save(run_hostctl, "@site.example", "--delete"))
    assert not (files / "site.example.toml").exists()
    ok(save(run_hostctl, "@plat", "--delete"))
    ok(save(run_hostctl, "@srv", "--delete"))
    assert not list(files.glob("*.toml"))
    one_line_error(save(run_hostctl, "@srv", "--delete"))
    one_line_error(run_hostctl("context", "show", "@srv"))


def test_reference_reset_frees_the_target(run_hostctl, topology) -> None:
    one_line_error(save(run_hostctl, "@srv", "--delete"))
    ok(save(run_hostctl, "@plat", "--web_server", "null"))
    ok(save(run_hostctl, "@site.example", "--db_server", "null"))
    ok(save(run_hostctl, "@srv", "--delete"))


# -- files ------------------------------------------------------------------------------


def test_context_file_is_private_versioned_toml(run_hostctl, home: Path) -> None:
    old = os.umask(0)
    try:
        ok(save(run_hostctl, "@srv", "--context_type", "server", "--http_port", "8080"))
        ok(save(run_hostctl, "@srv", "--db_port", "3306"))
    finally:
        os.umask(old)
    path = home / "contexts" / "srv.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "contexts").stat().st_mode) == 0o700
    doc = tomllib.loads(path.read_text())
    assert isinstance(doc["format"], int) and not isinstance(doc["format"], bool)
    assert doc["format"] >= 1
    assert doc["name"] == "@srv" and doc["type"] == "server"
    assert doc["fields"] == {"http_port": 8080, "db_port": 3306}
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in (home / "contexts").iterdir() if p.name != ".lock") == [
        "srv.toml"]


# -- listing and fields -----------------------------------------------------------------


def test_list_sorted_filtered_and_json(run_hostctl, topology) -> None:
    ok(save(run_hostctl, "@a-srv", "--context_type", "server"))
    r = ok(run_hostctl("context", "list"))
    names = [line.split()[0] for line in r.out.splitlines() if line.startswith("@")]
    assert names == ["@a-srv", "@plat", "@site.example", "@srv"]
    r = ok(run_hostctl("context", "list", "--type", "server"))
    assert "@a-srv" in r.out and "@srv" in r.out
    assert "@plat" not in r.out and "@site.example" not in r.out
    docs = json.loads(ok(run_hostctl("context", "list", "--json")).out)
    assert [d["name"] for d in docs] == names
    # a listing in JSON is an array of what show gives
    assert docs[2] == show_json(run_hostctl, "@site.example")
    sites = json.loads(ok(run_hostctl("context", "list", "--type", "site", "--json")).out)
    assert [d["name"] for d in sites] == ["@site.example"]
    one_line_error(run_hostctl("context", "list", "--type", "router"))


def test_list_on_an_empty_home(run_hostctl) -> None:
    assert json.loads(ok(run_hostctl("context", "list", "--json")).out) == []
    assert ok(run_hostctl("context", "list")).out.strip() == ""


def test_fields_command_and_save_help(run_hostctl) -> None:
    doc = json.loads(ok(run_hostctl("context", "fields", "--json")).out)
    assert set(doc) == {"server", "platform", "site"}
    by_name = {t: {f["name"]: f for f in fs} for t, fs in doc.items()}
    assert by_name["platform"]["root"]["required"] is True
    assert by_name["site"]["platform"]["required"] is True
    assert by_name["server"]["db_passwd"]["secret"] is True
    for name in ("remote_host", "ip_addresses", "http_service_type", "http_port",
                 "db_service_type", "db_port"):
        assert name in by_name["server"]
    for name in ("uri", "platform", "db_server", "aliases", "redirection", "profile",
                 "language", "site_enabled"):
        assert name in by_name["site"]
    text = ok(run_hostctl("context", "fields")).out
    assert "--remote_host" in text and "--site_enabled" in text
    helptext = " ".join(ok(run_hostctl("provision-save", "--help")).out.split())
    assert "--context_type" in helptext and "--delete" in helptext
    for name in ("remote_host", "site_enabled", "web_server"):
        assert name in helptext
    one_line_error(run_hostctl("context", "fields", "router"))


# -- secrets ----------------------------------------------------------------------------


def test_secrets_are_hidden_unless_asked_for(run_hostctl, home: Path, topology) -> None:
    secret = "hunter2-pa55"
    r = ok(save(run_hostctl, "@srv", "--db_passwd", secret, "--json"))
    assert secret not in r.out
    ok(save(run_hostctl, "@site.example", f"--http_basic_auth_password={secret}x",
            "--cron_key", f"{secret}y"))
    for argv in (("context", "show", "@srv"), ("context", "show", "@srv", "--json"),
                 ("context", "show", "@site.example"), ("context", "list"),
                 ("context", "list", "--json")):
        r = ok(run_hostctl(*argv))
        assert secret not in r.out, argv
        assert secret not in r.err, argv
    fields = show_json(run_hostctl, "@srv")["fields"]
    assert fields["db_passwd"] and fields["db_passwd"] != secret
    assert show_json(run_hostctl, "@srv", "--show-secrets")["fields"]["db_passwd"] == secret
    site = show_json(run_hostctl, "@site.example", "--show-secrets")["fields"]
    assert (site["http_basic_auth_password"], site["cron_key"]) == (f"{secret}x", f"{secret}y")
    # an unset secret is not shown as if it were set
    assert show_json(run_hostctl, "@plat")["fields"].get("db_passwd") is None
    assert stored(home, "srv")["fields"]["db_passwd"] == secret


# -- corrupted files --------------------------------------------------------------------

GOOD = (
    'format = 1\nname = "@broken"\ntype = "server"\n'
    'created = "2026-01-01T00:00:00Z"\nupdated = "2026-01-01T00:00:00Z"\n\n[fields]\n'
)
CORRUPT = {
    "toml-syntax": b'format = 1\nname = "@broken\n[fields',
    "not-utf8": b'format = 1\nname = "@broken\xff\xfe"\n',
    "empty": b"",
    "binary": b"\x00\x01\x02PK\x03\x04\xff",
    "future-format": GOOD.replace("format = 1", "format = 99").encode(),
    "other-name": GOOD.replace('"@broken"', '"@other"').encode(),
    "unknown-type": GOOD.replace('"server"', '"router"').encode(),
    "unknown-field": (GOOD + 'colour = "red"\n').encode(),
    "wrong-kind": (GOOD + 'http_port = "eighty"\n').encode(),
    "out-of-range": (GOOD + "http_port = 70000\n").encode(),
    "deep-nesting": (GOOD + "ip_addresses = " + "[" * 20000 + "]" * 20000 + "\n").encode(),
}


@pytest.mark.parametrize("content", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupted_file_gives_one_line_naming_it(run_hostctl, home: Path, content) -> None:
    ok(save(run_hostctl, "@broken", "--context_type", "server"))
    ok(save(run_hostctl, "@fine", "--context_type", "server"))
    path = home / "contexts" / "broken.toml"
    path.write_bytes(content)
    for argv in (("context", "show", "@broken", "--json"), ("context", "list"),
                 ("provision-save", "@broken", "--http_port", "81")):
        r = run_hostctl(*argv)
        line = one_line_error(r, ExitStatus.USAGE)
        assert str(path) in line, (argv, line)
        assert r.out == ""
    assert path.read_bytes() == content  # never overwritten
    # the other contexts still work
    ok(run_hostctl("context", "show", "@fine"))


def test_corrupted_file_in_a_real_process(run_hostctl, home: Path, hostctl_process) -> None:
    ok(save(run_hostctl, "@broken", "--context_type", "server"))
    path = home / "contexts" / "broken.toml"
    path.write_text('format = 1\nname = "@broken\n')
    for argv in (("context", "show", "@broken"), ("context", "list")):
        p = hostctl_process(*argv)
        assert p.returncode == ExitStatus.USAGE, p
        assert "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert str(path) in p.stderr


# -- a storm of writers ---------------------------------------------------------------

STORM = {
    "remote_host": ("web1.example.org", "web1.example.org"),
    "ip_addresses": ("10.0.0.1,10.0.0.2", ["10.0.0.1", "10.0.0.2"]),
    "http_service_type": ("nginx", "nginx"),
    "http_port": ("8080", 8080),
    "http_ssl_port": ("8443", 8443),
    "http_restart_cmd": ("sudo systemctl reload nginx", "sudo systemctl reload nginx"),
    "web_group": ("www-data", "www-data"),
    "db_service_type": ("mysql", "mysql"),
    "db_host": ("db.example.org", "db.example.org"),
    "db_port": ("3306", 3306),
    "db_user": ("admin", "admin"),
    "db_passwd": ("s3cret", "s3cret"),
    "master_url": ("https://panel.example.org", "https://panel.example.org"),
    "admin_email": ("admin@example.org", "admin@example.org"),
    "script_user": ("aegir", "aegir"),
    "aegir_root": ("/var/aegir", "/var/aegir"),
    "backup_path": ("/var/aegir/backups", "/var/aegir/backups"),
    "config_path": ("/var/aegir/config", "/var/aegir/config"),
    "include_path": ("/var/aegir/includes", "/var/aegir/includes"),
    "protected": ("yes", True),
}


def test_twenty_concurrent_writers_lose_nothing(run_hostctl, home: Path) -> None:
    assert len(STORM) == 20
    env = {**os.environ, "HOSTCTL_HOME": str(home)}
    exe = hostctl_exe()
    procs = [
        subprocess.Popen(
            [exe, "provision-save", "@storm", "--context_type", "server", f"--{field}", raw],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for field, (raw, _) in STORM.items()
    ]
    try:
        results = [(p.args, *p.communicate(timeout=120), p.returncode) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for args, out, err, code in results:
        assert code == 0, (args, out, err)
    doc = stored(home, "storm")  # still valid TOML
    assert doc["fields"] == {field: value for field, (_, value) in STORM.items()}
    fields = show_json(run_hostctl, "@storm", "--show-secrets")["fields"]
    for field, (_, value) in STORM.items():
        assert fields[field] == value, field
    leftovers = [p.name for p in (home / "contexts").iterdir()
                 if p.name not in ("storm.toml", ".lock")]
    assert leftovers == []


def test_a_watched_store_keeps_its_listing_until_the_folder_changes(
        run_hostctl, home: Path) -> None:
    """A daemon's store keeps whole listings while inotify reports no change; a save, a
    delete and a file edited in place by hand each show at the next listing."""
    from hostctl.contexts.store import TomlStore
    from hostctl.paths import Paths

    ok(save(run_hostctl, "@srv", "--context_type", "server"))
    ok(save(run_hostctl, "@plat", "--context_type", "platform", "--root", "/srv/www"))
    ok(save(run_hostctl, "@a.example", "--context_type", "site", "--platform", "@plat"))
    store = TomlStore(Paths(home))
    assert store.watch()
    first = store.of_type("site")
    assert [c.name for c in first] == ["a.example"]
    assert store.of_type("site")[0] is first[0]  # kept, not read again

    ok(save(run_hostctl, "@b.example", "--context_type", "site", "--platform", "@plat"))
    assert [c.name for c in store.of_type("site")] == ["a.example", "b.example"]
    path = home / "contexts" / "a.example.toml"
    text = path.read_text()
    with open(path, "r+") as fh:  # in place, as some editors write
        fh.write(text.replace('language = "en"', 'language = "fr"') if 'language' in text
                 else text.replace("[fields]\n", '[fields]\nlanguage = "fr"\n'))
    assert store.of_type("site")[0].get("language") == "fr"
    ok(save(run_hostctl, "@b.example", "--delete"))
    assert [c.name for c in store.of_type("site")] == ["a.example"]
