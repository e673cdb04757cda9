"""Secret fields given without putting them on a command line: ``--FIELD -`` (stdin) and
``--FIELD @FILE``, for provision-save and for task add's --context-option; a bad source
is one line, exit 2, nothing saved. Real processes: the secret is looked for in every
/proc/*/cmdline while the command that reads it runs."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import hostctl_exe
from taskhelpers import wait_for

SECRET = "s3cr3t-Pa55w0rd-h6"


def show(run: Callable[..., subprocess.CompletedProcess[str]], name: str) -> dict[str, object]:
    p = run("context", "show", name, "--json", "--show-secrets")
    assert p.returncode == 0, p.stderr
    fields = json.loads(p.stdout)["fields"]
    assert isinstance(fields, dict)
    return fields


def all_cmdlines() -> list[bytes]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
    return found


def test_a_secret_from_stdin_is_never_on_any_command_line(home: Path, hostctl_process) -> None:
    env = {**os.environ, "HOSTCTL_HOME": str(home)}
    proc = subprocess.Popen([hostctl_exe(), "provision-save", "@srv", "--context_type",
                             "server", "--db_passwd", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        # once it has exec'd it waits for its stdin: the command line it shows is final
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        wait_for(lambda: b"--db_passwd" in cmdline.read_bytes(), 60, "hostctl to start")
        assert cmdline.read_bytes().endswith(b"--db_passwd\x00-\x00")
        out, err = proc.communicate(SECRET.encode() + b"\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert not any(SECRET.encode() in c for c in all_cmdlines())
    assert show(hostctl_process, "@srv")["db_passwd"] == SECRET
    # and it is not shown unless asked for
    plain = hostctl_process("context", "show", "@srv", "--json")
    assert SECRET not in plain.stdout


def test_a_secret_from_a_file(home: Path, hostctl_process, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    for content, expected in ((SECRET + "\n", SECRET), (SECRET + "\r\n", SECRET),
                              (SECRET, SECRET), (" spaced \n", " spaced "),
                              ("@at-sign\n", "@at-sign")):
        secret.write_text(content)
        secret.chmod(0o600)
        p = hostctl_process("provision-save", "@srv", "--context_type", "server",
                            f"--db_passwd=@{secret}")
        assert p.returncode == 0, p.stderr
        assert show(hostctl_process, "@srv")["db_passwd"] == expected
    # @@ is a literal @; other fields keep @ as written (a context reference, or text)
    p = hostctl_process("provision-save", "@srv", "--db_passwd", "@@literal", "--db_user",
                        "@admin")
    assert p.returncode == 0, p.stderr
    fields = show(hostctl_process, "@srv")
    assert fields["db_passwd"] == "@literal" and fields["db_user"] == "@admin"
    # the site's secret fields take it too; the dashed spelling as well
    secret.write_text("cron-key-value\n")
    hostctl_process("provision-save", "@p", "--context_type", "platform", "--root",
                    str(tmp_path), "--web_server", "@srv")
    p = hostctl_process("provision-save", "@s.example", "--context_type", "site",
                        "--platform", "@p", "--cron-key", f"@{secret}",
                        "--http_basic_auth_password", "-", input="basic-pass\n")
    assert p.returncode == 0, p.stderr
    fields = show(hostctl_process, "@s.example")
    assert fields["cron_key"] == "cron-key-value"
    assert fields["http_basic_auth_password"] == "basic-pass"
    assert fields["platform"] == "@p"


def bad_sources(tmp_path: Path) -> list[tuple[list[str], str, str]]:
    """(arguments, stdin, what the one-line error says) for sources that are refused."""
    folder = tmp_path / "adir"
    folder.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    nul = tmp_path / "nul"
    nul.write_bytes(b"pass\x00word\n")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    lines = tmp_path / "lines"
    lines.write_text("two\nlines\n")
    latin = tmp_path / "latin"
    latin.write_bytes(b"caf\xe9\n")
    return [
        (["--db_passwd", f"@{tmp_path / 'missing'}"], "", "No such file"),
        (["--db_passwd", f"@{folder}"], "", "not a regular file"),
        (["--db_passwd", f"@{fifo}"], "", "not a regular file"),
        (["--db_passwd", "@/dev/zero"], "", "not a regular file"),
        (["--db_passwd", f"@{empty}"], "", "is empty"),
        (["--db_passwd", f"@{nul}"], "", "NUL byte"),
        (["--db_passwd", f"@{big}"], "", "more than 65536 bytes"),
        (["--db_passwd", f"@{latin}"], "", "not UTF-8"),
        (["--db_passwd", f"@{lines}"], "", "control character"),
        (["--db_passwd", "-"], "a\tb\n", "control character"),
        (["--db_passwd", "@"], "", "name the file"),
        (["--db_passwd", "-"], "", "stdin is empty"),
        (["--db_passwd", "-"], "\n", "stdin is empty"),
    ]


def test_a_bad_source_is_one_line_exit_2_and_nothing_saved(
        home: Path, hostctl_process, tmp_path: Path) -> None:
    assert hostctl_process("provision-save", "@srv", "--context_type", "server",
                           "--db_passwd", "@@before").returncode == 0
    saved = (home / "contexts" / "srv.toml").read_bytes()
    for argv, stdin, message in bad_sources(tmp_path):
        for name, extra in (("@srv", []), ("@new", ["--context_type", "server"])):
            p = hostctl_process("provision-save", name, *extra, "--db_user", "x", *argv,
                                input=stdin, timeout=60)
            assert p.returncode == 2, (argv, p)
            assert message in p.stderr and p.stderr.count("\n") == 1, (argv, p.stderr)
        assert (home / "contexts" / "srv.toml").read_bytes() == saved
        assert not (home / "contexts" / "new.toml").exists()


def test_two_fields_from_stdin_are_refused(home: Path, hostctl_process, tmp_path) -> None:
    hostctl_process("provision-save", "@srv", "--context_type", "server")
    hostctl_process("provision-save", "@p", "--context_type", "platform", "--root",
                    str(tmp_path), "--web_server", "@srv")
    p = hostctl_process("provision-save", "@s.example", "--context_type", "site",
                        "--platform", "@p", "--cron_key", "-",
                        "--http_basic_auth_password", "-", input="a\nb\n")
    assert p.returncode == 2 and "only one field can be read from stdin" in p.stderr
    assert not (home / "contexts" / "s.example.toml").exists()


@pytest.mark.parametrize("fast", [True, False])
def test_task_add_context_option_reads_a_secret_too(
        home: Path, hostctl_process, tmp_path: Path, fast: bool) -> None:
    secret = tmp_path / "pw"
    secret.write_text(SECRET + "\n")
    assert hostctl_process("provision-save", "@srv", "--context_type", "server",
                           "--http_service_type", "none").returncode == 0
    # the fast path takes this form; a global option before the command sends it to typer
    lead = [] if fast else ["--home", str(home)]
    p = hostctl_process(*lead, "task", "add", "verify", "@srv", "-c",
                        f"db_passwd=@{secret}")
    assert p.returncode == 0, p.stderr
    task_id = p.stdout.strip()
    shown = hostctl_process("task", "show", task_id, "--json")
    assert SECRET not in shown.stdout
    hostctl_process("wait-queue", "--once", timeout=120)
    assert show(hostctl_process, "@srv")["db_passwd"] == SECRET

    p = hostctl_process(*lead, "task", "add", "verify", "@srv", "-c",
                        f"db_passwd=@{tmp_path / 'missing'}")
    assert p.returncode == 2 and "--context-option db_passwd: cannot read" in p.stderr
    listed = hostctl_process("task", "list", "--json")
    assert len(json.loads(listed.stdout)) == 1


def test_help_says_how(hostctl_process) -> None:
    for argv in (["provision-save", "--help"], ["task", "add", "--help"]):
        p = hostctl_process(*argv)
        text = " ".join(p.stdout.split())
        assert p.returncode == 0 and "@FILE" in text and "stdin" in text, p.stdout
