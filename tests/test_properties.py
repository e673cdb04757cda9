"""Property tests over hostile input (issue 5, "Garbage and hostile input").

hypothesis feeds hostctl context names, field values, option strings, config files and
spool files. Whatever it sends, hostctl answers with success or a one-line error carrying
the documented exit code (SPEC.md: 2 for bad input, 1 for an operation that failed),
never a traceback; it writes nothing outside its home, and a refused request leaves every
file as it was.

The outcome each input should have is worked out here from SPEC.md and the rules the
schema documents (contexts/schema.py's docstring), not by calling hostctl's own parsers,
so a parser that drifts from its documented rules fails a property.

Every example gets a folder of its own (made inside the test), holding the home and
whatever lies beside it: pytest's function-scoped fixtures (``home``, ``tmp_path``) are
shared by all the examples of one test. The CLI runs in-process (``run_hostctl``); task
commands run as real child processes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from taskhelpers import ids_in

from hostctl.cli.main import main
from hostctl.contexts.schema import TYPES, Kind
from hostctl.queues.model import new_id

# ---------------------------------------------------------------------------------------
# shared parts
# ---------------------------------------------------------------------------------------

# Several CLI calls per example, each in a fresh home: hypothesis' health checks about
# slow data generation and function-scoped fixtures do not apply.
def prop(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large],
    )

# Any code point at all: NUL, controls, lone surrogates (what a file name or a JSON
# "\udXXX" escape can carry), private use, unassigned.
ANY_CHAR = st.characters(exclude_categories=())
ANY_TEXT = st.text(ANY_CHAR, max_size=24)
# What a real command line can carry: Python decodes argv with surrogateescape, so the
# only lone surrogates in it are U+DC80..U+DCFF.
ARGV_CHAR = ANY_CHAR.filter(lambda c: not "\ud800" <= c <= "\udc7f"
                            and not "\udd00" <= c <= "\udfff")
ARGV_TEXT = st.text(ARGV_CHAR, max_size=24)

SPEC_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*", re.ASCII)  # SPEC.md, "Contexts"
MAX_NAME = 235
BOOL_TRUE = {"1", "true", "yes", "on", "y"}
BOOL_FALSE = {"0", "false", "no", "off", "n"}
BOOL_WORDS = BOOL_TRUE | BOOL_FALSE | {"null"}
HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}"
                  r"[a-z0-9])?)*", re.ASCII)
EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
URL = re.compile(r"https?://[A-Za-z0-9._~:/?#\[\]@!&'()*+,;=%-]+")
WORD = re.compile(r"[A-Za-z0-9._+@-]+")
INT = re.compile(r"[+-]?[0-9]+", re.ASCII)


@dataclass(frozen=True)
class Out:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def command_tree_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build hostctl's click command tree once per test, as one hostctl process builds
    it once, instead of at every in-process call: building it takes typer ~20 ms, most
    of the cost of a call, and these properties make thousands of calls. The tree is
    reused as click reuses it across invocations; every call still parses its own
    arguments into a context of its own."""
    import typer.main

    from hostctl.cli import main as cli_main

    original = typer.main.get_command
    built: list[Any] = []

    def get_command(typer_instance: Any) -> Any:
        if typer_instance is not cli_main.app:
            return original(typer_instance)
        if not built:
            built.append(original(typer_instance))
        return built[0]

    monkeypatch.setattr(typer.main, "get_command", get_command)


class Hostctl:
    """``hostctl --home HOME ...`` in this process, through the run_hostctl fixture."""

    def __init__(self, run_hostctl: Callable[..., Any], home: Path) -> None:
        self.run = run_hostctl
        self.home = home

    def __call__(self, *argv: str) -> Out:
        res = self.run("--home", str(self.home), *argv)
        return Out(res.code, res.out, res.err)

    def ok(self, *argv: str) -> Out:
        res = self(*argv)
        assert res.code == 0, (argv, res)
        return res

    def json(self, *argv: str) -> Any:
        return json.loads(self.ok(*argv).out)


def no_trace(res: Out, argv: tuple[str, ...] | list[str]) -> None:
    """No traceback, no internal error: the exit code is one SPEC.md documents."""
    assert "Traceback" not in res.out + res.err, (argv, res)
    assert "internal error" not in res.err, (argv, res)
    assert res.code in (0, 1, 2), (argv, res)


def one_line_error(res: Out, argv: tuple[str, ...] | list[str], code: int = 2) -> None:
    """Refused: the exit code, and exactly one line on stderr, hostctl's error line."""
    no_trace(res, argv)
    assert res.code == code, (argv, res)
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hostctl: error: "), (argv, res.err)


def snapshot(root: Path) -> dict[str, tuple[str, object]]:
    """Every path under ``root``: its kind and content (a file's bytes, a link's target)."""
    found: dict[str, tuple[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                found[rel] = ("dir", None)
            elif stat.S_ISREG(mode):
                found[rel] = ("file", Path(path).read_bytes())
            else:
                found[rel] = ("other", stat.S_IFMT(mode))
    return found


def only_inside_home(before: dict[str, tuple[str, object]],
                     after: dict[str, tuple[str, object]], what: object) -> None:
    """Whatever changed between two snapshots of the sandbox lies in ``home/``."""
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    outside = sorted(p for p in changed if p != "home" and not p.startswith("home/"))
    assert not outside, (what, outside)


@contextmanager
def sandbox(parent: Path, template: Path | None = None) -> Iterator[tuple[Path, Path]]:
    """A fresh folder ``base`` for one example, the working directory while it runs
    (a relative path would land in it), with ``base/home`` copied from ``template``."""
    base = Path(tempfile.mkdtemp(prefix="ex-", dir=parent))
    home = base / "home"
    if template is not None:
        shutil.copytree(template, home, symlinks=True)
    (base / "cwd").mkdir()
    cwd = os.getcwd()
    os.chdir(base / "cwd")
    try:
        yield base, home
    finally:
        os.chdir(cwd)
        shutil.rmtree(base, ignore_errors=True)


def build_home(home: Path, *argvs: tuple[str, ...]) -> Path:
    for argv in argvs:
        assert main(["--home", str(home), *argv]) == 0, argv
    return home


PLATFORM_ROOT = "/srv/www/plat"  # only stored: no test here reads it


def topology(home: Path) -> Path:
    """@srv and @srv2 (servers), @plat (a platform on @srv), @site (a site on @plat)."""
    return build_home(
        home,
        ("provision-save", "@srv", "--context_type", "server", "--db_service_type", "sqlite"),
        ("provision-save", "@srv2", "--context_type", "server"),
        ("provision-save", "@plat", "--context_type", "platform", "--root", PLATFORM_ROOT,
         "--web_server", "@srv"),
        ("provision-save", "@site", "--context_type", "site", "--platform", "@plat",
         "--db_server", "@srv"),
    )


TOPOLOGY = {"srv": "server", "srv2": "server", "plat": "platform", "site": "site"}


def write_config(home: Path, doc: dict[str, Any]) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps(doc))


# ---------------------------------------------------------------------------------------
# 1. context names
# ---------------------------------------------------------------------------------------

def spec_valid_name(raw: str) -> bool:
    """SPEC.md: ``@`` (optional) + ``[a-z0-9][a-z0-9._-]*``, at most 235, no ``..``."""
    bare = raw[1:] if raw.startswith("@") else raw
    return bool(SPEC_NAME.fullmatch(bare)) and len(bare) <= MAX_NAME and ".." not in bare


NAME_BITS = ["..", "/", ".", "-", "--", "@", "a", "z", "0", "9", "_", "\x00", " ", "\n",
             "\t", "é", "A", "~", "$(id)", "*", "\\", "%2e", "\u212a", "\udcff", "-h",
             "--help", ".toml", "\u0131"]
NAMES = st.one_of(
    ANY_TEXT,
    st.from_regex(r"@?[a-z0-9][a-z0-9._-]{0,40}", fullmatch=True),
    st.lists(st.sampled_from(NAME_BITS), min_size=1, max_size=8).map("".join),
    st.tuples(st.sampled_from(["", "@"]), st.integers(MAX_NAME - 3, MAX_NAME + 3),
              st.sampled_from("a0.-_")).map(lambda t: t[0] + "a" + t[2] * (t[1] - 1)),
)


def name_commands(raw: str) -> list[tuple[str, ...]]:
    return [
        ("provision-save", raw, "--context_type", "server"),
        ("context", "show", raw),
        ("task", "add", "verify", raw),
        ("provision-verify", raw),
    ]


@pytest.fixture(scope="module")
def server_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("server-home") / "home"
    return build_home(home, ("provision-save", "@srv", "--context_type", "server"))


@prop(100)
@given(raw=NAMES)
@example(raw="../outside")
@example(raw="@../../etc/x")
@example(raw="/abs/path")
@example(raw=".hidden")
@example(raw="-rf")
@example(raw="-h")
@example(raw="a" * MAX_NAME)
@example(raw="@" + "b" * MAX_NAME)
@example(raw="a" * (MAX_NAME + 1))
@example(raw="a..b")
@example(raw="")
@example(raw="@")
@example(raw="a\x00b")
@example(raw="srv")
def test_context_names_are_taken_as_spec_md_says_or_refused_leaving_every_file(
        run_hostctl, tmp_path: Path, server_home: Path, raw: str) -> None:
    valid = spec_valid_name(raw)
    with sandbox(tmp_path, server_home) as (base, home):
        hostctl = Hostctl(run_hostctl, home)
        for argv in name_commands(raw):
            before = snapshot(base)
            res = hostctl(*argv)
            after = snapshot(base)
            no_trace(res, argv)
            if valid:
                assert res.code == 0, (argv, res)
                only_inside_home(before, after, argv)
            else:
                if res.code == 0:  # a name that is a help flag, where an option goes
                    assert raw.startswith("-") and "Usage:" in res.out, (argv, res)
                else:
                    one_line_error(res, argv)
                assert after == before, (argv, "a refused name changed files")
        stored = sorted(os.listdir(home / "contexts"))
        if valid:
            bare = raw.removeprefix("@")
            assert f"{bare}.toml" in stored
            shown = hostctl.json("context", "show", raw, "--json")
            assert shown["name"] == f"@{bare}" and shown["type"] == "server"
        else:
            assert stored == sorted(os.listdir(server_home / "contexts"))


# ---------------------------------------------------------------------------------------
# 2. field values
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldInfo:
    """A field as ``hostctl context fields --json`` describes it."""

    name: str
    kind: str
    required: bool
    default: Any
    choices: tuple[str, ...]
    ref_type: str | None


_FIELDS: dict[str, dict[str, FieldInfo]] = {}


def fields_info(hostctl: Hostctl) -> dict[str, dict[str, FieldInfo]]:
    """``context fields --json``, asked once (it is the same for every home)."""
    if not _FIELDS:
        doc = hostctl.json("context", "fields", "--json")
        _FIELDS.update({t: {f["name"]: FieldInfo(f["name"], f["kind"], f["required"],
                                                 f["default"], tuple(f["choices"]),
                                                 f["ref_type"]) for f in fields}
                        for t, fields in doc.items()})
    return _FIELDS


def plain_text(text: str) -> bool:
    """The schema's "text without control characters"."""
    return not any(c in text for c in "\x00\r\n") and (text == "" or text.isprintable())


SECRET_FIELDS = frozenset({"db_passwd", "cron_key", "http_basic_auth_password"})
#: the whole numbers that are not ports, and their ranges
INT_RANGES = {"ssl_renew_days": (1, 3650)}


class Refused(Exception):
    pass


def oracle_host(text: str) -> str:
    low = text.lower()
    if not text.isascii() or not HOST.fullmatch(low) or len(low) > 253:
        raise Refused
    for label in low.split("."):  # xn-- labels must decode; '--' there is for xn-- only
        if label.startswith("xn--"):
            try:
                label[4:].encode().decode("punycode")
            except UnicodeError:
                raise Refused from None
        elif label[2:4] == "--":
            raise Refused
    return low


def oracle_url(text: str) -> str:
    if not URL.fullmatch(text):
        raise Refused
    return text


def oracle_path(text: str) -> str:
    if not text.startswith("/") or ".." in text.split("/") or any(c in text for c in '"\\$'):
        raise Refused("not absolute, or '..', or what nginx would misread")
    return os.path.normpath(text)


def expected_value(info: FieldInfo, raw: str, target: str, contexts: dict[str, str]) -> Any:
    """The value ``--FIELD raw`` stores on context ``target``, as ``context show --json``
    gives it (a reset: the default), per the rules in contexts/schema.py's docstring;
    raises Refused for a value those rules refuse."""
    if raw == "null":
        if info.required:
            raise Refused("a required field cannot be reset")
        return target if info.name == "uri" else info.default
    kind = info.kind
    if info.name in SECRET_FIELDS:  # `-` reads stdin, `@FILE` a file, `@@X` is `@X`
        assume(raw != "-")  # this test's stdin is pytest's
        if raw.startswith("@@"):
            raw = raw[1:]
        elif raw.startswith("@"):
            raise Refused("no such file (the test runs in an empty folder)")
    if kind == "str":
        if not plain_text(raw):
            raise Refused
        return raw
    if kind == "int":
        text = raw.strip()
        low, high = INT_RANGES.get(info.name, (1, 65535))  # every other int is a port
        if not INT.fullmatch(text) or not low <= int(text) <= high:
            raise Refused
        return int(text)
    if kind == "bool":
        word = raw.strip().lower()
        if word in BOOL_TRUE:
            return True
        if word in BOOL_FALSE:
            return False
        raise Refused
    if kind in ("list", "hosts", "ips"):
        items: list[str] = []
        for part in raw.split(","):
            item = part.strip()
            if not plain_text(item):
                raise Refused
            if item and kind == "hosts":
                item = oracle_host(item)
            elif item and kind == "ips":
                try:
                    item = str(ipaddress.ip_address(item))
                except ValueError:
                    raise Refused from None
            if item and item not in items:
                items.append(item)
        return items
    text = raw.strip()
    if kind in ("command", "location"):
        if not plain_text(text):
            raise Refused
        if not text:
            return ""
        if kind == "location":
            return oracle_path(text) if text.startswith("/") else oracle_url(text)
        try:
            words = shlex.split(text)
        except ValueError:
            raise Refused("a quote left open") from None
        if not words:
            raise Refused("no command")
        return text
    if kind in ("email", "url", "word"):
        if not plain_text(text):
            raise Refused
        if not text:
            return ""
        if kind == "url":
            if not URL.fullmatch(text):
                raise Refused
            return text
        if kind == "word":
            if not WORD.fullmatch(text):
                raise Refused
            return text
        local, at, host = text.rpartition("@")
        if not at or not EMAIL_LOCAL.fullmatch(local) or len(text) > 254:
            raise Refused
        return f"{local}@{oracle_host(host)}"
    if kind == "endpoint":
        if not plain_text(text):
            raise Refused
        if not text.startswith("/"):
            return oracle_host(text) if text else ""
        return oracle_path(text)
    if kind == "path" and any(c in raw for c in '"\\$'):
        raise Refused("nginx would misread it")
    if kind == "host":
        if not text.isascii():
            raise Refused("a host name is ASCII (IDNA names are written in xn-- form)")
        text = text.lower()
    if not plain_text(text):
        raise Refused
    if kind == "choice":
        if text not in info.choices:
            raise Refused
        return text
    if kind == "path":
        return oracle_path(text)
    if kind == "host":
        return oracle_host(text)
    assert kind == "ref", kind
    if not spec_valid_name(text):
        raise Refused
    bare = text.removeprefix("@")
    if bare == target or contexts.get(bare) != info.ref_type:
        raise Refused
    return f"@{bare}"


HOSTILE_VALUES = [
    "null", "NULL", " null", "", " ", "-h", "--help", "-", "--", "--x", "$(touch pwned)",
    "`id`", "; rm -rf /", "a,b,,a, b", ",", "\t", "\x00", "a\nb", "\r", "true", "TRUE",
    "off", "Y", "0", "1", "65535", "65536", "-1", "+80", " 80 ", "8_0", "\u0663",
    "\uff18\uff10", "0x50", "1e3", "/", "/a/../b", "//x", "/tmp/../..", "relative/path",
    "~", "example.COM", "\u212aexample.com", "xn--bcher-kva.example", "a-.com", "@srv",
    "@ghost", "srv", "@plat", "@site", "@SRV", " @srv2 ", "nginx", "NGINX", " sqlite ",
    "profile", "'\"", "\u00e9", "\u200b", "\udcff", "a" * 300, "\u3000x\u3000",
    "site", "www.site,SITE", "xn--zz-.example", "ab--cd.example", "sh -c 'x", "a b 'c d'",
    "https://x.example/m", "/srv/a/..", "*.example.com",
]


def kind_values(kind: Kind, choices: tuple[str, ...]) -> st.SearchStrategy[str]:
    pad = st.sampled_from(["", " ", "\t", "\u3000"])
    if kind is Kind.INT:
        return st.tuples(pad, st.integers(-5, 70000), pad).map(lambda t: f"{t[0]}{t[1]}{t[2]}")
    if kind is Kind.BOOL:
        return st.tuples(st.sampled_from(sorted(BOOL_WORDS)), st.booleans()).map(
            lambda t: t[0].upper() if t[1] else t[0])
    if kind is Kind.LIST:
        return st.lists(st.one_of(ANY_TEXT, st.sampled_from(["a", " b ", "", "a"])),
                        max_size=4).map(",".join)
    if kind is Kind.CHOICE:
        return st.tuples(pad, st.sampled_from(choices), pad).map("".join)
    if kind is Kind.PATH:
        return st.one_of(ANY_TEXT.map(lambda s: "/" + s),
                         st.from_regex(r"(/[a-z.]{0,4}){1,4}/?", fullmatch=True))
    if kind is Kind.HOST:
        return st.from_regex(HOST.pattern, fullmatch=True).filter(lambda h: len(h) < 60)
    if kind is Kind.REF:
        return st.tuples(pad, st.sampled_from(["", "@"]),
                         st.sampled_from([*TOPOLOGY, "ghost"])).map("".join)
    return ANY_TEXT


def values_for(kind: Kind, choices: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_VALUES), ANY_TEXT, kind_values(kind, choices),
                     kind_values(kind, choices))


TARGETS = {"server": "srv2", "platform": "plat", "site": "site"}
_BEFORE: dict[str, Any] = {}


def shown_before(hostctl: Hostctl, target: str) -> Any:
    """``context show @target --json --show-secrets`` in the (unchanged) template."""
    if target not in _BEFORE:
        _BEFORE[target] = hostctl.json("context", "show", f"@{target}", "--json",
                                       "--show-secrets")
    return _BEFORE[target]


@st.composite
def field_changes(draw: st.DrawFn) -> tuple[str, list[tuple[str, str, str, bool]]]:
    """(context type, [(field, spelling, raw value, as --field=value)])."""
    ctype = draw(st.sampled_from(sorted(TYPES)))
    schema = TYPES[ctype].fields
    chosen = draw(st.lists(st.sampled_from(sorted(schema)), min_size=1, max_size=3,
                           unique=True))
    out = []
    for name in chosen:
        spec = schema[name]
        raw = draw(values_for(spec.kind, spec.choices))
        spelling = draw(st.sampled_from([name, name.replace("_", "-")]))
        joined = draw(st.booleans())
        if spec.kind is Kind.BOOL and raw.lower() not in BOOL_WORDS:
            joined = True  # --flag VALUE with a non-word VALUE: VALUE is not its value
        out.append((name, spelling, raw, joined))
    return ctype, out


@prop(150)
@given(case=field_changes())
@example(case=("server", [("http_port", "http-port", "\u0663", True)]))
@example(case=("server", [("http_port", "http_port", "8_0", True)]))
@example(case=("site", [("uri", "uri", "\u212aexample.com", True)]))
@example(case=("site", [("language", "language", "-h", False)]))
@example(case=("site", [("language", "language", "--help", False)]))
@example(case=("site", [("platform", "platform", "null", True)]))
@example(case=("platform", [("web_server", "web-server", "@plat", True)]))
@example(case=("site", [("aliases", "aliases", "www.site,SITE", True)]))
@example(case=("server", [("http_restart_cmd", "http_restart_cmd", "sh -c 'x", True)]))
@example(case=("server", [("config_path", "config_path", "/srv/a/..", True)]))
@example(case=("platform", [("makefile", "makefile", "https://x.example/m", True)]))
def test_field_values_round_trip_or_are_refused_leaving_the_file_byte_identical(
        run_hostctl, tmp_path: Path, topology_home: Path,
        case: tuple[str, list[tuple[str, str, str, bool]]]) -> None:
    ctype, changes = case
    target = TARGETS[ctype]
    with sandbox(tmp_path, topology_home) as (base, home):
        hostctl = Hostctl(run_hostctl, home)
        info = fields_info(hostctl)[ctype]
        assert all(f.name.endswith("_port") or f.name in INT_RANGES
                   for f in info.values() if f.kind == "int")
        argv = ["provision-save", f"@{target}"]
        expected: dict[str, Any] = {}
        refused = False
        for name, spelling, raw, joined in changes:
            argv += [f"--{spelling}={raw}"] if joined else [f"--{spelling}", raw]
            if not joined and raw.startswith("--"):
                refused = True  # a value starting with -- must be written --field=--value
            try:
                expected[name] = expected_value(info[name], raw, target, TOPOLOGY)
            except Refused:
                refused = True
        ctx_file = home / "contexts" / f"{target}.toml"
        before = shown_before(hostctl, target)
        if ctype == "site" and not refused and {"uri", "aliases"} & set(expected):
            uri = expected.get("uri", before["fields"]["uri"])
            if uri in expected.get("aliases", before["fields"]["aliases"]):
                refused = True  # a site's own uri is no alias of it
        files = snapshot(base)
        res = hostctl(*argv)
        if refused:
            one_line_error(res, argv)
            assert snapshot(base) == files, (argv, "a refused save changed files")
            return
        no_trace(res, argv)
        assert res.code == 0, (argv, res, expected)
        only_inside_home(files, snapshot(base), argv)
        doc = tomllib.loads(ctx_file.read_text(encoding="utf-8"))
        assert ctx_file.stat().st_mode & 0o777 == 0o600
        after = hostctl.json("context", "show", f"@{target}", "--json", "--show-secrets")
        for name, value in after["fields"].items():
            want = expected.get(name, before["fields"][name])
            assert value == want, (argv, name, value, want)
        for name, _, raw, _ in changes:
            if raw == "null":
                assert name not in doc["fields"], (name, "a reset field stays in the file")
            else:
                assert doc["fields"][name] == expected[name], (name, doc["fields"][name])


@pytest.fixture(scope="module")
def topology_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return topology(tmp_path_factory.mktemp("topology") / "home")


# ---------------------------------------------------------------------------------------
# 3. option strings
# ---------------------------------------------------------------------------------------

# Writes its argv as JSON into HOME/argv.json: what the task's command received.
ECHO = ("import json, os, sys; open(os.environ['HOSTCTL_HOME'] + '/argv.json', 'w')"
        ".write(json.dumps(sys.argv[1:]))")
DECLARED = {"val": "any value", "dry-run": "do nothing"}


@pytest.fixture(scope="module")
def echo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = topology(tmp_path_factory.mktemp("echo") / "home")
    write_config(home, {"tasks": {"echo": {
        "command": [sys.executable, "-c", ECHO, "{option.val}", "--val={option.val}"],
        "context_types": ["site"], "options": DECLARED}}})
    return home


OPTION_VALUES = st.one_of(
    ARGV_TEXT,
    st.sampled_from(["a b", "'quoted'", '"double"', "a;b", "; rm -rf /", "$(touch x)",
                     "`id`", "-h", "--help", "-", "--", "--json", "-x", "-abc", "--val=1",
                     "=", "a=b", "", " ", "\n", "\x00", "\\", "{root}", "{option.val}",
                     "%s", "\udcff", "null"]),
)
OPTION_KEYS = st.one_of(
    st.sampled_from(["val", "val", "dry-run", "dry_run", "VAL", " val", "val ", "v",
                     "context_type", "json", "x-y", "option.val", "help2", "-", "_"]),
    ARGV_TEXT.filter(lambda k: "=" not in k),
)
SITE_FIELDS = sorted(TYPES["site"].fields)


@st.composite
def task_add_case(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    options = [("val", draw(OPTION_VALUES))] if draw(st.booleans()) else []
    options += draw(st.lists(st.tuples(OPTION_KEYS, OPTION_VALUES), max_size=2))
    context_options = []
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            name = draw(st.sampled_from(SITE_FIELDS))
            spec = TYPES["site"].fields[name]
            key = draw(st.sampled_from([name, name.replace("_", "-"), f" {name} "]))
            value = draw(values_for(spec.kind, spec.choices))
        else:
            key, value = draw(OPTION_KEYS), draw(OPTION_VALUES)
        context_options.append((key, value))
    return options, context_options


@prop(100)
@given(case=task_add_case())
@example(case=([("val", "--help")], []))
@example(case=([("val", "-h")], [("language", "-h")]))
@example(case=([("val", "$(touch pwned)"), ("dry-run", "; rm -rf /")], []))
@example(case=([("val", "a=b=c")], [("language", "")]))
@example(case=([("val", "x"), (" val", "y")], []))
def test_task_add_options_reach_the_command_as_single_argv_items_or_are_refused(
        run_hostctl, tmp_path: Path, echo_home: Path,
        case: tuple[list[tuple[str, str]], list[tuple[str, str]]]) -> None:
    options, context_options = case
    with sandbox(tmp_path, echo_home) as (base, home):
        hostctl = Hostctl(run_hostctl, home)
        site = fields_info(hostctl)["site"]
        argv = ["task", "add", "echo", "@site"]
        refused = False
        want_options: dict[str, str] = {}
        for i, (key, value) in enumerate(options):
            argv += [("--option", "-o")[i % 2], f"{key}={value}"]
            key = key.strip()
            if not key or key in want_options or key not in DECLARED or "\x00" in value:
                refused = True
            want_options[key] = value
        want_fields: dict[str, Any] = {}
        for i, (key, value) in enumerate(context_options):
            argv += [("--context-option", "-c", "--context_option")[i % 3], f"{key}={value}"]
            field = key.strip().replace("-", "_")
            if not field or field in want_fields or field not in site:
                refused = True
                continue
            try:
                want_fields[field] = expected_value(site[field], value, "site", TOPOLOGY)
            except Refused:
                refused = True
        files = snapshot(base)
        res = hostctl(*argv)
        if refused:
            one_line_error(res, argv)
            assert snapshot(base) == files, (argv, "a refused task add changed files")
            return
        no_trace(res, argv)
        assert res.code == 0, (argv, res)
        task_id = res.out.strip()
        res = hostctl("wait-queue", "--once")
        no_trace(res, ["wait-queue", "--once"])
        assert res.code == 0, res
        task = hostctl.json("task", "show", task_id, "--json")
        assert task["status"] == "success", task
        assert task["options"] == want_options
        val = want_options.get("val", "")
        assert json.loads((home / "argv.json").read_text()) == [val, f"--val={val}"]
        fields = hostctl.json("context", "show", "@site", "--json", "--show-secrets")["fields"]
        for name, value in want_fields.items():
            assert fields[name] == value, (name, fields[name], value)


BOOLS = {"1", "0", "true", "false", "yes", "no", "on", "off", "y", "n"}
PROVISION_KEYS = st.one_of(
    st.sampled_from(["val", "val", "dry-run", "dry_run", "dry-Run", "VAL", "v", "x",
                     "json", "context_type", "delete", "-", "--", "h"]),
    ARGV_TEXT.filter(lambda k: "=" not in k and k != "help"),
)


@prop(100)
@given(pairs=st.lists(st.tuples(PROVISION_KEYS, OPTION_VALUES, st.booleans()), max_size=3))
@example(pairs=[("val", "-h", False)])
@example(pairs=[("val", "--help", False)])
@example(pairs=[("val", "--help", True)])
@example(pairs=[("val", "-abc", False)])
@example(pairs=[("val", "a b 'c' \"d\" ; $(x)", False), ("dry-run", "--", True)])
@example(pairs=[("dry-run", "1", False), ("dry_run", "2", False)])
@example(pairs=[("json", "", True)])
@example(pairs=[("json", "off", True), ("val", "x", False)])
@example(pairs=[("json", "null", False)])
@example(pairs=[("json", "-h", False)])
@example(pairs=[("dry-Run", "", False), ("json", "-h", False)])
def test_provision_options_reach_the_command_as_single_argv_items_or_are_refused(
        run_hostctl, tmp_path: Path, echo_home: Path, pairs: list[tuple[str, str, bool]],
        ) -> None:
    argv = ["provision-echo", "@site"]
    refused = open_ended = False
    seen: dict[str, str] = {}
    for key, value, joined in pairs:
        if not joined and key == "":
            joined = True  # a bare "--" ends the options: the value would be a name
        argv += [f"--{key}={value}"] if joined else [f"--{key}", value]
        canonical = {"val": "val", "dry_run": "dry-run"}.get(key.replace("-", "_"), key)
        if key == "json":  # hostctl's own flag (echo declares no json option)
            # alone, =true or =false; a word after it that is no boolean is a second
            # context name, and one that starts with - is read on its own (an option,
            # or -h: the help)
            if not joined and value.startswith("-"):
                open_ended = True
            elif value.lower() not in BOOLS or "\x00" in value or canonical in seen:
                refused = True
        elif (not key or canonical in seen or canonical not in DECLARED
                or (not joined and value.startswith("--")) or "\x00" in value):
            refused = True
        seen[canonical] = value
    with sandbox(tmp_path, echo_home) as (base, home):
        hostctl = Hostctl(run_hostctl, home)
        files = snapshot(base)
        res = hostctl(*argv)
        if open_ended:  # whatever it makes of it (the help, an option): one line, or run
            if res.code != 0:
                one_line_error(res, argv)
            if refused:  # with an option that is refused, nothing runs, whichever wins
                assert not (home / "argv.json").exists(), (argv, res)
                assert snapshot(base) == files, (argv, "a refused provision changed files")
            return
        if refused:
            one_line_error(res, argv)
            assert snapshot(base) == files, (argv, "a refused provision changed files")
            return
        no_trace(res, argv)
        assert res.code == 0, (argv, res)
        val = seen.get("val", "")
        assert json.loads((home / "argv.json").read_text()) == [val, f"--val={val}"]


# ---------------------------------------------------------------------------------------
# 4. config.toml
# ---------------------------------------------------------------------------------------

CONFIG_KEYS = [
    "worker", "tasks", "queues", "spool", "concurrency", "max_attempts", "backoff_base",
    "backoff_max", "timeout", "kill_grace", "max_load", "allow_network_filesystem",
    "command", "context_types", "options", "help", "rerun_on_loss", "env", "cron",
    "backup", "task_gc", "type", "frequency", "items", "enabled", "threshold",
    "min_threads", "max_threads", "retention_days", "verify", "site", "note",
]
SCALARS = st.one_of(
    st.integers(),  # TOML integers are 64-bit, Python's tomllib takes any size
    st.integers(0, 10),
    st.sampled_from([2**63 - 1, 2**64, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["serial", "batch", "spread", "site", "server", "platform", "{name}",
                     "{option.x}", "{db_passwd}", "{root}", sys.executable, "/bin/true"]),
    st.datetimes(), st.dates(), st.times(),
)
TOML_KEYS = st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=8))
TOML_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(TOML_KEYS, inner, max_size=4)),
    max_leaves=12,
)
SECTION = st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=5)
CONFIG_DOCS = st.one_of(
    st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=5),
    st.fixed_dictionaries({}, optional={
        "worker": SECTION,
        "spool": SECTION,
        "queues": st.dictionaries(st.sampled_from(["tasks", "cron", "backup", "task_gc", "x"]),
                                  SECTION, max_size=3),
        "tasks": st.dictionaries(st.sampled_from(["note", "verify", "x-y", "Bad", "echo"]),
                                 SECTION, max_size=3),
    }),
)
CONFIG_BYTES = st.one_of(
    st.text(max_size=200).map(str.encode),
    st.binary(max_size=200),  # not UTF-8, mostly
    st.lists(st.sampled_from(["[worker]", "[tasks.x]", "[[queues]]", "concurrency = 2",
                              "command = ['a']", "x = ", "= 1", "[", "\x00", "a = 1\na = 2",
                              "[queues.tasks]\nfrequency = 1e999", "[" * 2000,
                              "x = " + "[" * 2000, "timeout = nan", "\ufeff"]),
             max_size=6).map(lambda lines: "\n".join(lines).encode()),
)
CONFIG_COMMANDS = [("queue", "list"), ("task", "add", "verify", "@x"), ("context", "list")]


@pytest.fixture(scope="module")
def x_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("x-home") / "home"
    return build_home(home, ("provision-save", "@x", "--context_type", "server"))


def config_result(hostctl: Hostctl, base: Path) -> None:
    for argv in CONFIG_COMMANDS:
        files = snapshot(base)
        res = hostctl(*argv)
        no_trace(res, argv)
        if res.code:
            one_line_error(res, argv, res.code)
        only_inside_home(files, snapshot(base), argv)


@prop(150)
@given(doc=CONFIG_DOCS)
@example(doc={"queues": {"tasks": {"frequency": float("nan")}}})
@example(doc={"queues": {"tasks": {"frequency": float("inf")}}})
@example(doc={"queues": {"tasks": {"frequency": 2**63 - 1}}})
@example(doc={"worker": {"backoff_base": 2**63 - 1, "timeout": float("inf")}})
@example(doc={"tasks": {"note": {"command": ["/bin/true"], "timeout": float("nan")}}})
@example(doc={"queues": {"tasks": {"frequency": 10**400}}})
@example(doc={"worker": {"timeout": 10**400}})
@example(doc={"tasks": {"note": {"command": ["/bin/true"], "timeout": 10**400}}})
@example(doc={"tasks": {"verify": {"command": ["/bin/true"]}}})
def test_any_toml_config_gives_a_clean_answer(run_hostctl, tmp_path: Path, x_home: Path,
                                              doc: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        assume(False)  # not a TOML document
    with sandbox(tmp_path, x_home) as (base, home):
        (home / "config.toml").write_text(text)
        config_result(Hostctl(run_hostctl, home), base)


@pytest.mark.parametrize(("text", "key"), [
    ("[worker]\ntimeout = nan", "timeout"),
    ("[worker]\nbackoff_max = inf", "backoff_max"),
    ("[worker]\nmax_load = -inf", "max_load"),
    ("[queues.cron]\nfrequency = nan", "frequency"),
    ("[queues.task_gc]\nretention_days = 1e10", "retention_days"),
    ("[worker]\nkill_grace = 1" + "0" * 400, "kill_grace"),
    ("[tasks.t]\ncommand = ['/bin/true']\ntimeout = nan", "timeout"),
    ("[tasks.t]\ncommand = ['/bin/true']\ntimeout = inf", "timeout"),
])
def test_config_numbers_must_be_finite_and_in_range(run_hostctl, tmp_path: Path,
                                                    x_home: Path, text: str, key: str) -> None:
    """nan compares false with everything (a queue due every nan seconds never runs, a
    task with a nan timeout is never stopped), and inf or a huge integer overflows the
    time arithmetic: refused like any other malformed setting, naming it."""
    with sandbox(tmp_path, x_home) as (_, home):
        (home / "config.toml").write_text(text)
        argv = ("queue", "list")
        res = Hostctl(run_hostctl, home)(*argv)
        one_line_error(res, argv)
        assert "config.toml" in res.err and key in res.err, res.err


@prop(100)
@given(data=CONFIG_BYTES)
def test_any_config_bytes_give_a_clean_answer(run_hostctl, tmp_path: Path, x_home: Path,
                                              data: bytes) -> None:
    with sandbox(tmp_path, x_home) as (base, home):
        (home / "config.toml").write_bytes(data)
        config_result(Hostctl(run_hostctl, home), base)


# ---------------------------------------------------------------------------------------
# 5. spool files
# ---------------------------------------------------------------------------------------

NOTE = ["sh", "-c", 'echo "$1" >> "$HOSTCTL_HOME/ran"', "sh", "{task_id}"]
SPOOL_FOLDERS = ("new", "deferred", "active", "done", "incoming")


@pytest.fixture(scope="module")
def note_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = topology(tmp_path_factory.mktemp("note") / "home")
    write_config(home, {"tasks": {"note": {"command": NOTE, "context_types": ["site"]}}})
    return home


def file_name_ok(name: str) -> bool:
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:
        return False
    return name not in ("", ".", "..") and "/" not in name and b"\x00" not in raw \
        and len(raw) <= 200


@dataclass(frozen=True)
class Garbage:
    folder: str
    name: str
    kind: str  # file, dir, link, fifo
    content: bytes = b""


def task_like(draw: st.DrawFn) -> bytes:
    """A JSON line that looks like a task or a submission, with hostile values."""
    values = st.one_of(ANY_TEXT, st.integers(), st.none(), st.booleans(),
                       st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=2),
                       st.lists(ANY_TEXT, max_size=2))
    doc = draw(st.fixed_dictionaries({}, optional={
        "format": st.one_of(st.just(1), values), "id": st.one_of(st.just(new_id()), values),
        "type": st.one_of(st.sampled_from(["note", "verify", "lock", "nope"]), values),
        "context": st.one_of(st.sampled_from(["@site", "@plat", "@ghost", "@../x"]), values),
        "options": values, "context_options": values, "priority": values,
        "created": values, "receipt": values, "delay": values, "submitter": values,
    }))
    line = json.dumps(doc, ensure_ascii=draw(st.booleans())) + "\n"
    tail = draw(st.sampled_from(["", "", '{"event": "start"}\n', "{torn", '{"event": 1}\n']))
    return (line + tail).encode("utf-8", "surrogatepass")


@st.composite
def garbage_files(draw: st.DrawFn) -> list[Garbage]:
    names = st.one_of(
        st.text(max_size=24),
        st.sampled_from(["0.task", "x.task", ".hidden", ".x.tmp", "x.reason", "zz",
                         f"5{new_id()}.task", f"{new_id()}.task", "1.x", "ffffffffffff.x",
                         "zz.5x.task", "-rf", " ", "a b", "é.task", "1..x"]),
    )
    out: list[Garbage] = []
    for _ in range(draw(st.integers(1, 5))):
        folder = draw(st.sampled_from(SPOOL_FOLDERS))
        name = draw(names)
        if not file_name_ok(name) or any(g.folder == folder and g.name == name for g in out):
            continue
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "link", "fifo"]))
        content = b""
        if kind == "file":
            content = draw(st.one_of(st.binary(max_size=300), st.builds(lambda: b""),
                                     st.just(b"\n"), st.composite(task_like)()))
        out.append(Garbage(folder, name, kind, content))
    return out


def plant(spool: Path, g: Garbage, outside: Path) -> None:
    path = spool / g.folder / g.name
    if g.kind == "dir":
        path.mkdir()
        (path / "inside").write_bytes(b"inside a folder")
    elif g.kind == "link":
        path.symlink_to(outside)
    elif g.kind == "fifo":
        os.mkfifo(path)
    elif g.folder == "incoming":
        tmp = spool / "incoming" / f".drop-{new_id()}"
        tmp.write_bytes(g.content)
        os.rename(tmp, path)  # the documented way to drop: a dot-name, then rename
    else:
        path.write_bytes(g.content)


def same_thing(path: Path, g: Garbage, outside: Path) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if g.kind == "link":
        return stat.S_ISLNK(mode) and os.readlink(path) == str(outside)
    if g.kind == "dir":
        return stat.S_ISDIR(mode) and (path / "inside").read_bytes() == b"inside a folder"
    if g.kind == "fifo":
        return stat.S_ISFIFO(mode)
    return stat.S_ISREG(mode) and path.read_bytes() == g.content


def set_aside(spool: Path, folder: str, g: Garbage, outside: Path) -> Path | None:
    """Where ``g`` lies in quarantine/ or rejected/ (NAME or NAME.ID), if it does, with
    its reason beside it. A due deferred/DUE.REST goes to new/REST first, so it is
    quarantined as REST."""
    where = spool / folder
    names = [g.name]
    if g.folder == "deferred":
        names.append(g.name.partition(".")[2])
    for name in os.listdir(where):
        if any(name == n or name.startswith(n + ".") for n in names) \
                and same_thing(where / name, g, outside) \
                and (where / f"{name}.reason").is_file():
            return where / name
    return None


def submitted_id(content: bytes) -> str | None:
    try:
        doc = json.loads(content)
    except ValueError:
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def hidden(name: str) -> bool:
    return name.startswith(".")


def due_in_future(name: str) -> bool:
    """Does a deferred/ name start with a due time (hex ms) that is still to come?"""
    try:
        return int(name.partition(".")[0], 16) / 1000 > time.time()
    except ValueError:
        return False


@prop(80)
@given(junk=garbage_files())
@example(junk=[Garbage("deferred", "0.task", "file", b"")])
@example(junk=[Garbage("new", "0", "file", b'{"format": 2}\n')])  # no task's name: garbage
@example(junk=[Garbage("done", "0.task", "file", b'{"format": 2}\n')])  # listed around it
@example(junk=[Garbage(f, f"g-{k}.task", k, b"") for f in SPOOL_FOLDERS
               for k in ("dir", "link", "fifo")])
def test_garbage_in_every_spool_folder_is_set_aside_and_a_valid_task_still_runs(
        run_hostctl, tmp_path: Path, note_home: Path, junk: list[Garbage]) -> None:
    with sandbox(tmp_path, note_home) as (base, home):
        hostctl = Hostctl(run_hostctl, home)
        hostctl.ok("task", "list")
        good = hostctl.ok("task", "add", "note", "@site").out.strip()  # makes the spool
        spool = home / "spool"
        outside = base / "outside.task"
        outside.write_bytes(b'{"id": "%s", "type": "note", "context": "@site"}\n'
                            % new_id().encode())
        for g in junk:
            plant(spool, g, outside)

        for argv in (("wait-queue", "--once"), ("task", "list", "--json"),
                     ("queue", "status", "--json")):
            res = hostctl(*argv)
            no_trace(res, argv)
            assert res.code == 0, (argv, res)
            if "--json" in argv:
                json.loads(res.out)

        assert hostctl.json("task", "show", good, "--json")["status"] == "success"
        assert outside.read_bytes().startswith(b'{"id"')  # a link is moved, never followed
        listed = {t["id"] for t in hostctl.json("task", "list", "--json")}
        aside = {"quarantine": 0, "rejected": 0}
        admitted = []
        for g in junk:
            if hidden(g.name):
                assert same_thing(spool / g.folder / g.name, g, outside), (
                    g, "a dot-name must be left alone")
                continue
            if same_thing(spool / g.folder / g.name, g, outside):
                # left in place: a finished task hostctl cannot read (task_gc sets it aside
                # when its time comes), or one deferred to a time still to come
                assert g.folder == "done" or (g.folder == "deferred"
                                              and due_in_future(g.name)), (g, "left in place")
                continue
            folder = "rejected" if g.folder == "incoming" else "quarantine"
            found = set_aside(spool, folder, g, outside)
            if found is None and g.folder == "incoming":  # a valid drop: admitted
                admitted.append(submitted_id(g.content))
                assert admitted[-1] in listed, (g, "neither rejected nor admitted")
                continue
            assert found is not None, (g, f"not found in {folder}/")
            reason = found.with_name(found.name + ".reason")
            assert reason.read_text().strip(), (g, "no reason beside it")
            aside[folder] += 1
        counts = hostctl.json("queue", "status", "--json")["counts"]
        assert (counts["quarantined"], counts["rejected"]) == (
            aside["quarantine"], aside["rejected"]), (counts, aside)
        assert sorted((home / "ran").read_text().split()) == sorted([good, *admitted])
        assert ids_in(home, "done").count(good) == 1


# ---------------------------------------------------------------------------------------
# defects the properties found, kept as explicit examples
# ---------------------------------------------------------------------------------------

def drop(spool: Path, name: str | bytes, content: bytes) -> None:
    """Drop a file into incoming/ as docs/spool.md says: a dot-name, then rename."""
    folder = os.fsencode(spool / "incoming")
    tmp = os.path.join(folder, b".drop-" + new_id().encode())
    Path(os.fsdecode(tmp)).write_bytes(content)
    os.rename(tmp, os.path.join(folder, os.fsencode(name)))


@pytest.fixture
def spool_home(run_hostctl, tmp_path: Path, echo_home: Path) -> Iterator[tuple[Hostctl, Path]]:
    with sandbox(tmp_path, echo_home) as (_, home):
        hostctl = Hostctl(run_hostctl, home)
        hostctl.ok("wait-queue", "--once")  # the spool exists
        yield hostctl, home / "spool"


def test_a_deferred_name_without_a_rest_is_quarantined(spool_home) -> None:
    hostctl, spool = spool_home
    (spool / "deferred" / "abc").write_bytes(b"garbage\n")
    res = hostctl("wait-queue", "--once")
    no_trace(res, ["wait-queue", "--once"])
    assert res.code == 0, res
    assert (spool / "quarantine" / "abc.reason").is_file()


def test_a_quarantined_file_named_like_a_reason_is_counted(spool_home) -> None:
    hostctl, spool = spool_home
    (spool / "new" / "x.reason").write_bytes(b"garbage\n")
    hostctl.ok("wait-queue", "--once")
    assert (spool / "quarantine" / "x.reason.reason").is_file()  # it was set aside
    status = hostctl.json("queue", "status", "--json")
    assert status["counts"]["quarantined"] == 1, status
    assert [q["file"] for q in status["quarantined"]] == ["x.reason"]


def test_queue_status_shows_a_rejected_drop_whose_name_is_not_utf8(spool_home) -> None:
    hostctl, spool = spool_home
    drop(spool, b"\xff.task", b"not a task\n")
    hostctl.ok("wait-queue", "--once")
    assert (spool / "rejected" / os.fsdecode(b"\xff.task.reason")).is_file()
    for argv in (("queue", "status", "--json"), ("queue", "status")):
        res = hostctl(*argv)
        no_trace(res, argv)
        assert res.code == 0, (argv, res)


def test_a_drop_whose_option_cannot_be_an_argv_item_is_rejected(spool_home) -> None:
    hostctl, spool = spool_home
    task_id = new_id()
    drop(spool, f"{task_id}.task", b'{"id": "%s", "type": "echo", "context": "@site", '
         b'"options": {"val": "\\ud800"}}\n' % task_id.encode())
    hostctl.ok("wait-queue", "--once")
    for argv in (("task", "show", task_id), ("task", "list", "--json")):
        no_trace(hostctl(*argv), argv)
    assert (spool / "rejected" / f"{task_id}.task.reason").is_file()


def test_task_show_prints_an_option_value_that_is_not_utf8(spool_home) -> None:
    hostctl, _ = spool_home
    task_id = hostctl.ok("task", "add", "echo", "@site", "--option", "val=\udcff").out.strip()
    for argv in (("task", "show", task_id, "--json"), ("task", "show", task_id),
                 ("task", "list", "--json")):
        res = hostctl(*argv)
        no_trace(res, argv)
        assert res.code == 0, (argv, res)


def test_a_deferred_name_whose_rest_is_a_dot_name_is_quarantined(spool_home) -> None:
    hostctl, spool = spool_home
    (spool / "deferred" / "1..x").write_bytes(b"garbage\n")
    hostctl.ok("wait-queue", "--once")
    assert os.listdir(spool / "new") == []
    assert hostctl.json("queue", "status", "--json")["counts"]["quarantined"] == 1


def test_a_due_deferred_file_never_replaces_a_queued_task(spool_home) -> None:
    hostctl, spool = spool_home
    task_id = hostctl.ok("task", "add", "echo", "@site").out.strip()
    (queued,) = os.listdir(spool / "new")
    (spool / "deferred" / f"1.{queued}").write_bytes(b"garbage\n")
    hostctl.ok("wait-queue", "--once")
    assert hostctl.json("task", "show", task_id, "--json")["status"] == "success"
