"""Every field is checked by its kind when it is saved, and no two sites may claim one host
name (a uri or an alias), whoever saves: provision-save, a task's context options, a front
end's drop, or two saves racing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import hostctl_exe
from runnerhelpers import save_sites

from hostctl.queues.task import new_id

INJECTION = "www.example.com;} server { listen 9999"


@pytest.fixture
def sites(run_hostctl, home: Path) -> Path:
    return save_sites(run_hostctl, home, ["one.example", "two.example"])


@pytest.mark.parametrize("field,value", [
    ("aliases", INJECTION),
    ("aliases", "www.one.example,bad name"),
    ("aliases", "-lead.example"),
    ("aliases", "a" * 64 + ".example"),  # a label of 64 characters
    ("aliases", "b\u00fccher.example"),  # not in its xn-- form
    ("uri", "x.example;"),
    ("admin_email", "root"),
    ("admin_email", "root@bad host"),
    ("admin_email", "a@b@example.org"),
    ("language", "fr; rm -rf /"),
    ("profile", "standard\"x"),
    ("client_name", "line\nbreak"),
])
def test_a_site_value_not_of_its_kind_is_refused_and_nothing_changes(
        run_hostctl, home: Path, sites: Path, field: str, value: str) -> None:
    path = home / "contexts" / "one.example.toml"
    before = path.read_bytes()
    res = run_hostctl("provision-save", "@one.example", f"--{field}", value)
    assert res.code == 2, res
    assert len(res.err.strip().splitlines()) == 1 and f"--{field}" in res.err, res.err
    assert path.read_bytes() == before


@pytest.mark.parametrize("field,value", [
    ("ip_addresses", "localhost"),
    ("ip_addresses", "300.1.1.1"),
    ("master_url", "javascript:alert(1)"),
    ("web_disable_url", "http://example.org/a b"),
    ("web_disable_url", 'http://example.org/"x'),
    ("config_path", "/srv/conf$x"),
    ("config_path", '/srv/"conf'),
    ("db_user", "admin user"),
    ("http_port", "0"),
    ("db_port", "65536"),
    ("remote_host", "under_score.example"),
])
def test_a_server_value_not_of_its_kind_is_refused(run_hostctl, home: Path, sites: Path,
                                                    field: str, value: str) -> None:
    before = (home / "contexts" / "srv.toml").read_bytes()
    res = run_hostctl("provision-save", "@srv", f"--{field}", value)
    assert res.code == 2, res
    assert (home / "contexts" / "srv.toml").read_bytes() == before


def test_values_of_each_kind_are_stored_in_one_spelling(run_hostctl, home: Path,
                                                        sites: Path) -> None:
    assert run_hostctl("provision-save", "@one.example", "--aliases",
                       " WWW.One.Example ,xn--bcher-kva.example,www.one.example",
                       "--admin_email", "Web.Master+x@One.Example",
                       "--language", "pt-BR").code == 0
    assert run_hostctl("provision-save", "@srv", "--ip_addresses", "127.0.0.1, ::0001",
                       "--web_disable_url", "https://example.org/off?site=1").code == 0
    one = json.loads(run_hostctl("context", "show", "@one.example", "--json").out)["fields"]
    assert one["aliases"] == ["www.one.example", "xn--bcher-kva.example"]
    assert one["admin_email"] == "Web.Master+x@one.example"
    srv = json.loads(run_hostctl("context", "show", "@srv", "--json").out)["fields"]
    assert srv["ip_addresses"] == ["127.0.0.1", "::1"]


def test_no_site_may_take_another_sites_host_name(run_hostctl, home: Path,
                                                 sites: Path) -> None:
    assert run_hostctl("provision-save", "@one.example", "--aliases",
                       "www.one.example").code == 0
    for argv in (("@two.example", "--aliases", "one.example"),  # the other's uri
                 ("@two.example", "--aliases", "WWW.ONE.EXAMPLE"),  # its alias, any case
                 ("@two.example", "--uri", "www.one.example"),
                 ("@three.example", "--context_type", "site", "--platform", "@plat",
                  "--uri", "one.example")):
        res = run_hostctl("provision-save", *argv)
        assert res.code == 2 and "is taken by @one.example" in res.err, (argv, res)
    assert not (home / "contexts" / "three.example.toml").exists()
    # a task's context options are checked as a save is, before the id is printed
    res = run_hostctl("task", "add", "verify", "@two.example", "--context-option",
                      "aliases=one.example")
    assert res.code == 2 and "is taken by @one.example" in res.err, res
    # a site's own names are its own to keep
    assert run_hostctl("provision-save", "@one.example", "--aliases",
                       "www.one.example,one.example").code == 0


def test_a_drop_that_would_take_another_sites_name_is_rejected(
        run_hostctl, home: Path, sites: Path) -> None:
    assert run_hostctl("dispatch").code == 0  # the spool exists
    incoming = home / "spool" / "incoming"
    task_id = new_id()
    doc = {"id": task_id, "type": "verify", "context": "@two.example",
           "context_options": {"aliases": "one.example"}}
    (incoming / ".d").write_text(json.dumps(doc) + "\n")
    os.rename(incoming / ".d", incoming / f"{task_id}.task")
    assert run_hostctl("wait-queue", "--once").code == 0
    reason = (home / "spool" / "rejected" / f"{task_id}.task.reason").read_text()
    assert "is taken by @one.example" in reason, reason
    assert "aliases" not in (home / "contexts" / "two.example.toml").read_text()


def test_two_saves_racing_for_one_name_leave_it_to_one(home: Path, sites: Path) -> None:
    env = {**os.environ, "HOSTCTL_HOME": str(home)}
    for n in range(6):
        name = f"race{n}.example"
        procs = [subprocess.Popen([hostctl_exe(), "provision-save", site, "--aliases", name],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for site in ("@one.example", "@two.example")]
        codes = sorted(p.wait(timeout=60) for p in procs)
        assert codes == [0, 2], codes
        holders = [s for s in ("one.example", "two.example")
                   if name in (home / "contexts" / f"{s}.toml").read_text()]
        assert len(holders) == 1, holders
