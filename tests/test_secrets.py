"""Secret context fields: masked when shown, redacted from task logs (also when a command
writes them in pieces), refused on a command line, absent from hostctl's own log and from
task documents; the files that hold them are private."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from runnerhelpers import hostctl_log, write_config
from taskhelpers import show

from hostctl.contexts.schema import secret_field_names
from hostctl.contexts.store import SECRET_MASK

# every secret field the docs name, with a value of each context below
DB_PASSWD = "db-Pa55word-of-srv"  # @srv, the site's db_server
WEB_PASSWD = "web-Pa55word-of-web"  # @web, the platform's web_server (two references away)
BASIC = "basic-auth-Pa55"  # the site's http_basic_auth_password
CRON_KEY = "cron-key-0123456789"  # the site's cron_key
SECRETS = (DB_PASSWD, WEB_PASSWD, BASIC, CRON_KEY)
DOCUMENTED = {"db_passwd", "cron_key", "http_basic_auth_password"}

# Prints the secrets it was given in its environment, whole, cut in two between writes,
# on stderr, twice on one line and last without a newline; also its result.
LEAK = r"""
import json, os, sys, time
out = lambda text: (os.write(1, text.encode()), time.sleep(0.2))
for key in ("LEAK_DB", "LEAK_WEB", "HOSTCTL_FIELD_HTTP_BASIC_AUTH_PASSWORD",
            "HOSTCTL_FIELD_CRON_KEY"):
    value = os.environ[key]
    print("whole:", value, flush=True)
    out("split: " + value[:5])
    out(value[5:] + " end\n")
    os.write(2, ("stderr: " + value + "\n").encode())
    print("twice:", value + value, flush=True)
json.dump({"echo": os.environ["LEAK_DB"], "nested": [os.environ["HOSTCTL_FIELD_CRON_KEY"]]},
          open(os.environ["HOSTCTL_RESULT"], "w"))
print("marker: not a secret", flush=True)
os.write(1, ("last: " + os.environ["HOSTCTL_FIELD_CRON_KEY"]).encode())
"""


@pytest.fixture
def site(run_hostctl, home: Path, tmp_path: Path) -> str:
    """@srv and @web (servers with a db password), @plat on @web, @shop.example on @plat
    with @srv as its database server, and a ``leak`` type that prints them all."""
    root = tmp_path / "www"
    root.mkdir()
    write_config(home, {"tasks": {"leak": {
        "command": [sys.executable, "-c", LEAK], "context_types": ["site"],
        "env": {"LEAK_DB": DB_PASSWD, "LEAK_WEB": WEB_PASSWD}}}})
    for argv in (
        ("@srv", "--context_type", "server", "--db_passwd", DB_PASSWD),
        ("@web", "--context_type", "server", f"--db_passwd={WEB_PASSWD}"),
        ("@plat", "--context_type", "platform", "--root", str(root), "--web_server", "@web"),
        ("@shop.example", "--context_type", "site", "--platform", "@plat", "--db_server",
         "@srv", "--http_basic_auth_password", BASIC, "--cron_key", CRON_KEY),
    ):
        res = run_hostctl("provision-save", *argv)
        assert res.code == 0, res
        assert not any(s in res.out + res.err for s in SECRETS), res
    return "@shop.example"


def test_the_documented_secret_fields_are_secret() -> None:
    assert secret_field_names() == DOCUMENTED


def test_context_show_masks_secrets_unless_asked(run_hostctl, site: str) -> None:
    for name, secrets in (("@srv", {"db_passwd": DB_PASSWD}),
                          ("@shop.example", {"http_basic_auth_password": BASIC,
                                             "cron_key": CRON_KEY})):
        human = run_hostctl("context", "show", name)
        doc = run_hostctl("context", "show", name, "--json")
        listed = run_hostctl("context", "list", "--json")
        for res in (human, doc, listed):
            assert res.code == 0, res
            assert not any(s in res.out + res.err for s in SECRETS), res.out
        fields = json.loads(doc.out)["fields"]
        assert {k: fields[k] for k in secrets} == {k: SECRET_MASK for k in secrets}
        for key in secrets:
            line = next(ln for ln in human.out.splitlines() if ln.startswith(key + " "))
            assert SECRET_MASK in line, line
        shown = run_hostctl("context", "show", name, "--json", "--show-secrets")
        assert {k: json.loads(shown.out)["fields"][k] for k in secrets} == secrets
        human = run_hostctl("context", "show", name, "--show-secrets")
        assert all(v in human.out for v in secrets.values())


def check_redacted(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret
        # nor a recognisable piece of it (the cut happens after 5 characters)
        assert secret[5:] not in text, secret
    assert "marker: not a secret" in text


def test_a_task_log_has_every_secret_of_its_contexts_redacted(
        run_hostctl, home: Path, site: str) -> None:
    res = run_hostctl("task", "add", "leak", site)
    assert res.code == 0, res
    task_id = res.out.strip()
    res = run_hostctl("wait-queue", "--once")
    assert res.code == 0, res.err
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "success", doc
    log = run_hostctl("task", "log", task_id).out
    check_redacted(log)
    for kind in ("whole", "split", "stderr", "twice"):
        assert log.count(f"{kind}: [secret]") == 4, (kind, log)
    assert log.count("[secret][secret]") == 4
    assert "split: [secret] end" in log and "last: [secret]" in log

    shown = run_hostctl("task", "show", task_id, "--json")
    assert not any(s in shown.out for s in SECRETS), shown.out
    assert json.loads(shown.out)["result"] == {"echo": "[secret]", "nested": ["[secret]"]}
    assert not any(s in hostctl_log(home) for s in SECRETS)
    assert hostctl_log(home)  # the worker did write its own log


def test_a_foreground_task_echoes_redacted_output(hostctl_process, site: str) -> None:
    res = hostctl_process("provision-leak", site)
    assert res.returncode == 0, res.stderr
    check_redacted(res.stdout)
    assert not any(s in res.stderr for s in SECRETS)
    assert "whole: [secret]" in res.stdout


@pytest.mark.parametrize("item", ["{db_passwd}", "--password={http_basic_auth_password}",
                                  "{name}:{cron_key}"])
def test_a_secret_placeholder_on_a_command_line_is_refused(
        run_hostctl, home: Path, item: str) -> None:
    field = item.rsplit("{", 1)[1].rstrip("}")
    write_config(home, {"tasks": {"show-it": {"command": ["echo", item],
                                              "context_types": ["server", "site"]}}})
    res = run_hostctl("task", "list")
    assert res.code == 2, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hostctl: error: "), res.err
    assert "[tasks.show-it]" in lines[0] and f"{{{field}}}" in lines[0]
    assert f"$HOSTCTL_FIELD_{field.upper()}" in lines[0]  # what to do instead


def test_secret_files_and_logs_are_private(run_hostctl, home: Path, site: str) -> None:
    res = run_hostctl("task", "add", "leak", site)
    assert res.code == 0, res
    assert run_hostctl("wait-queue", "--once").code == 0
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(home) & 0o077 == 0 and mode(home / "contexts") == 0o700
    files = sorted((home / "contexts").glob("*.toml"))
    assert len(files) == 4
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    logs = sorted((home / "logs").iterdir())
    assert mode(home / "logs") & 0o007 == 0
    assert len(logs) == 2 and "hostctl.log" in {p.name for p in logs}
    assert {p.name: mode(p) & 0o077 for p in logs} == {p.name: 0 for p in logs}
    assert DB_PASSWD in (home / "contexts" / "srv.toml").read_text()  # stored as given


def test_a_secret_context_option_or_option_is_masked_wherever_a_task_is_shown(
        run_hostctl, home: Path, site: str) -> None:
    """A secret given with the task (a context option, or an option whose key names a
    secret field) is stored in the task file for the run, and masked by task add --json,
    task show (text and JSON) and task list; the run still gets it."""
    write_config(home, {"tasks": {
        "leak": {"command": [sys.executable, "-c", LEAK], "context_types": ["site"],
                 "env": {"LEAK_DB": DB_PASSWD, "LEAK_WEB": WEB_PASSWD}},
        "opt": {"command": [sys.executable, "-c", "print('ran')"], "context_types": ["site"],
                "options": {"db-passwd": "a password for this run", "note": "plain"}}}})
    new_key = CRON_KEY + "-new"
    added = run_hostctl("task", "add", "leak", site, "--json", "--context-option",
                        f"cron_key={new_key}", "--context-option", "language=fr")
    assert added.code == 0, added
    task_id = json.loads(added.out)["id"]
    opt = run_hostctl("task", "add", "opt", site, "-o", f"db-passwd={DB_PASSWD}",
                      "-o", "note=in clear")
    assert opt.code == 0, opt
    opt_id = opt.out.strip()
    outputs = [added.out]
    for argv in (("task", "show", task_id, "--json"), ("task", "show", task_id),
                 ("task", "show", opt_id, "--json"), ("task", "show", opt_id),
                 ("task", "list", "--json"), ("task", "list")):
        res = run_hostctl(*argv)
        assert res.code == 0, res
        outputs.append(res.out + res.err)
    for text in outputs:
        assert CRON_KEY not in text and DB_PASSWD not in text, text
    doc = show(run_hostctl, task_id)
    assert doc["context_options"] == {"cron_key": SECRET_MASK, "language": "fr"}
    assert show(run_hostctl, opt_id)["options"] == {"db-passwd": SECRET_MASK,
                                                    "note": "in clear"}
    assert f"context option: cron_key={SECRET_MASK}" in outputs[2]
    assert json.loads(added.out)["context_options"]["cron_key"] == SECRET_MASK

    # the run got the value, and saved it into the context
    assert run_hostctl("wait-queue", "--once").code == 0
    assert show(run_hostctl, task_id)["status"] == "success"
    shown = run_hostctl("context", "show", site, "--json", "--show-secrets")
    assert json.loads(shown.out)["fields"]["cron_key"] == new_key
    assert new_key not in run_hostctl("task", "log", task_id).out  # redacted there too
