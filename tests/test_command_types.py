"""Command task types declared in config.toml, and plugin task types: how options and
context fields reach the command (argv placeholders, environment), that a value is always
one argv item and never shell syntax, options versus context options, and a plugin type
found through the ``hostctl.tasks`` entry point group."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from taskhelpers import (
    build_template,
    ids_in,
    python,
    save_sites,
    show,
    use_template,
    write_config,
)

# Writes its argv and the HOSTCTL_* environment to the file named by its first argument.
DUMP = ("import json, os, sys; json.dump({'argv': sys.argv[2:], 'env': {k: v for k, v in "
        "os.environ.items() if k.startswith(('HOSTCTL_', 'APP_'))}}, open(sys.argv[1], 'w'))")

HOSTILE = ["--x", "$(touch {mark}/pwned1)", "; rm -rf {mark}", "`touch {mark}/pwned2`",
           "a b \"c\" 'd'", "-", "|| touch {mark}/pwned3", "{root}", "--val=--other"]


def config(home: Path) -> None:
    write_config(home, {"tasks": {
        "dump": {
            "command": [python(), "-c", DUMP, "{root}/dump-{name}.json", "{uri}", "{name}",
                        "{context}", "{type}", "{task_id}", "{root}", "{language}",
                        "--val={option.val}", "{option.val}", "{option.dry-run}"],
            "context_types": ["site"],
            "options": {"val": "any value", "dry-run": "do nothing"},
            "env": {"APP_ENV": "test"},
        },
        "missing": {"command": ["/nonexistent/hostctl-test-binary"],
                    "context_types": ["site"]},
    }})


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("template"), ["a.example", "b.example"])


@pytest.fixture
def root(run_hostctl, home: Path, template: Path) -> Path:
    config(home)
    return use_template(template, home, run_hostctl)


def drain(run_hostctl) -> None:
    res = run_hostctl("wait-queue", "--once")
    assert res.code == 0, res.err


def dump(root: Path, site: str) -> dict:
    return json.loads((root / f"dump-{site}.json").read_text())


def test_placeholders_and_environment_reach_the_command(root: Path, run_hostctl) -> None:
    res = run_hostctl("task", "add", "dump", "@a.example", "--option", "val=v 1")
    assert res.code == 0, res.err
    task_id = res.out.strip()
    drain(run_hostctl)
    assert show(run_hostctl, task_id)["status"] == "success"
    got = dump(root, "a.example")
    assert got["argv"] == ["a.example", "a.example", "@a.example", "site", task_id,
                           str(root), "en", "--val=v 1", "v 1", ""]
    env = got["env"]
    assert env["HOSTCTL_TASK_ID"] == task_id and env["HOSTCTL_CONTEXT"] == "@a.example"
    assert env["HOSTCTL_CONTEXT_TYPE"] == "site" and env["HOSTCTL_TASK_TYPE"] == "dump"
    assert env["HOSTCTL_FIELD_URI"] == "a.example" and env["HOSTCTL_FIELD_ROOT"] == str(root)
    assert env["HOSTCTL_OPTION_VAL"] == "v 1" and env["APP_ENV"] == "test"
    assert env["HOSTCTL_RESULT"] and env["HOSTCTL_HOME"]


def test_context_options_are_saved_and_options_are_not(root: Path, run_hostctl,
                                                       home: Path) -> None:
    res = run_hostctl("task", "add", "dump", "@a.example", "--option", "val=only-once",
                      "--context-option", "language=fr", "--context-option",
                      "admin_email=ops@example.org")
    assert res.code == 0, res.err
    task_id = res.out.strip()
    ctx_file = home / "contexts" / "a.example.toml"
    assert "fr" not in ctx_file.read_text()  # saved when the task runs, not before
    drain(run_hostctl)
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "success"
    assert doc["options"] == {"val": "only-once"}
    assert doc["context_options"] == {"language": "fr", "admin_email": "ops@example.org"}
    fields = tomllib.loads(ctx_file.read_text())["fields"]
    assert fields["language"] == "fr" and fields["admin_email"] == "ops@example.org"
    assert "only-once" not in ctx_file.read_text() and "val" not in fields
    assert ctx_file.stat().st_mode & 0o777 == 0o600
    got = dump(root, "a.example")
    assert got["argv"][6] == "fr"  # the command saw the saved value
    res = run_hostctl("context", "show", "@a.example", "--json")
    assert json.loads(res.out)["fields"]["language"] == "fr"


def test_context_options_of_a_request_are_not_lost_to_dedup(root: Path, run_hostctl,
                                                            home: Path) -> None:
    """A request that differs from a queued task only in its context options must not be
    merged into it silently: the context options it asked for are saved all the same."""
    first = run_hostctl("task", "add", "dump", "@b.example", "--option", "val=1")
    assert first.code == 0, first.err
    second = run_hostctl("task", "add", "dump", "@b.example", "--option", "val=1",
                         "--context-option", "language=de")
    assert second.code == 0, second.err
    drain(run_hostctl)
    fields = tomllib.loads((home / "contexts" / "b.example.toml").read_text())["fields"]
    assert fields.get("language") == "de", (first.out, second.out, second.err)


@pytest.mark.parametrize("via", ["task-add", "provision"])
def test_hostile_option_values_stay_single_argv_items(root: Path, run_hostctl, tmp_path: Path,
                                                      via: str) -> None:
    mark = tmp_path / "mark"
    mark.mkdir()
    (mark / "keep").write_text("still here")
    for raw in HOSTILE:
        value = raw.format(mark=mark, root="{root}")
        if via == "task-add":
            res = run_hostctl("task", "add", "dump", "@a.example", "--option", f"val={value}")
            assert res.code == 0, res.err
            drain(run_hostctl)
        else:
            res = run_hostctl("provision-dump", "@a.example", f"--val={value}")
            assert res.code == 0, res.err
        got = dump(root, "a.example")["argv"]
        assert got[-3:-1] == [f"--val={value}", value], raw
        assert dump(root, "a.example")["env"]["HOSTCTL_OPTION_VAL"] == value
    assert sorted(os.listdir(mark)) == ["keep"]  # nothing was executed
    assert (mark / "keep").read_text() == "still here"


def test_provision_takes_a_dashed_option_name(root: Path, run_hostctl) -> None:
    res = run_hostctl("provision-dump", "@b.example", "--dry-run", "yes")
    assert res.code == 0, res.err
    assert dump(root, "b.example")["argv"][-1] == "yes"
    res = run_hostctl("task", "add", "dump", "@b.example", "--option", "dry-run=no")
    assert res.code == 0, res.err
    drain(run_hostctl)
    got = dump(root, "b.example")
    assert got["argv"][-1] == "no" and got["env"]["HOSTCTL_OPTION_DRY_RUN"] == "no"


def test_a_command_that_cannot_start_ends_in_error(root: Path, run_hostctl,
                                                   hostctl_process) -> None:
    res = run_hostctl("task", "add", "missing", "@a.example")
    task_id = res.out.strip()
    proc = hostctl_process("wait-queue", "--once")
    assert proc.returncode == 0, proc.stderr
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "error" and doc["attempts"][0]["exit_code"] == 127
    res = run_hostctl("task", "log", task_id)
    assert "cannot run" in res.out


def test_config_refuses_a_secret_in_the_argv(run_hostctl, home: Path) -> None:
    write_config(home, {"tasks": {"leak": {"command": ["echo", "{cron_key}"],
                                           "context_types": ["site"]}}})
    res = run_hostctl("task", "list")
    assert res.code == 2 and "cron_key" in res.err


PLUGIN = '''
from hostctl.provision.tasktype import TaskType


def _greet(rc):
    rc.say(f"hello from a plugin on {rc.context.display_name} ({rc.options.get('who', '')})")
    rc.result["greeted"] = rc.context.display_name
    return 0


greet = TaskType("plugin-greet", ("site",), "greet a site", options={"who": "whom"},
                 function=_greet)
'''


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A plugin distribution on a PYTHONPATH folder only: nothing installed anywhere."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "hostctl_testplugin.py").write_text(PLUGIN)
    info = folder / "hostctl_testplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hostctl-testplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[hostctl.tasks]\nplugin-greet = hostctl_testplugin:greet\n")
    return folder


def test_plugin_task_type_from_an_entry_point(root: Path, run_hostctl, hostctl_process,
                                              plugin_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join(
        p for p in (str(plugin_path), os.environ.get("PYTHONPATH", "")) if p)}
    res = hostctl_process("--help", env=env)
    assert res.returncode == 0 and "provision-plugin-greet" in res.stdout
    res = hostctl_process("--help")
    assert "provision-plugin-greet" not in res.stdout  # only where the plugin is

    res = hostctl_process("provision-plugin-greet", "@a.example", "--who", "tests", env=env)
    assert res.returncode == 0, res.stderr
    assert "hello from a plugin on @a.example (tests)" in res.stdout

    res = hostctl_process("task", "add", "plugin-greet", "@b.example", env=env)
    assert res.returncode == 0, res.stderr
    task_id = res.stdout.strip()
    res = hostctl_process("task", "add", "plugin-greet", "@b.example")
    assert res.returncode == 2  # without the plugin the type is unknown
    res = hostctl_process("wait-queue", "--once", env=env)
    assert res.returncode == 0, res.stderr
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "success" and doc["result"] == {"greeted": "@b.example"}
    assert len(ids_in(root.parent / "home", "done")) == 2


def test_plugins_are_looked_up_only_when_a_name_is_not_known_otherwise() -> None:
    from hostctl.config import Config
    from hostctl.errors import InvalidInput
    from hostctl.provision.registry import Registry
    from hostctl.provision.tasktype import TaskType

    scans = []

    def plugins() -> list[TaskType]:
        scans.append(1)
        return [TaskType("extra", ("site",)), TaskType("verify", ("site",), "a clash")]

    builtin = TaskType("verify", ("server", "site"), "built in")
    reg = Registry([builtin], Config(), plugins)
    assert reg.get("verify") is builtin and not scans  # a known name: no scan
    assert reg.get("extra").name == "extra" and scans == [1]
    assert reg.names() == ["extra", "verify"] and reg.get("verify") is builtin
    assert scans == [1]  # scanned once
    with pytest.raises(InvalidInput, match="known types: extra, verify"):
        reg.get("nope")


def test_a_task_function_that_meets_an_os_error_ends_in_error_with_one_line(
        run_hostctl, home: Path) -> None:
    """A built-in or plugin function whose file work fails (a file gone meanwhile, a full
    disk) ends its task in error with the reason in one line, not a traceback."""
    from hostctl.config import load as load_config
    from hostctl.contexts.schema import field_names
    from hostctl.paths import Paths
    from hostctl.provision.registry import Registry
    from hostctl.provision.tasktype import TaskType
    from hostctl.runners import lifecycle as ops
    from hostctl.runners.worker import Worker

    def boom(rc) -> int:
        print("about to read it")
        open(rc.paths.home / "no-such-file")  # noqa: SIM115
        return 0

    save_sites(run_hostctl, home, ["a.example"])
    config = load_config(home / "config.toml", field_names())
    registry = Registry([TaskType("boom", ("site",), function=boom)], config)
    h = ops.Home(Paths(home))
    h.__dict__["registry"] = registry  # this home's types: just the one
    added = ops.add(h, "boom", "@a.example", {}, {}, 5)
    Worker(h.paths, config, registry).run(once=True)
    doc = show(run_hostctl, added.task.id)
    assert doc["status"] == "error", doc
    assert doc["result"]["error"].startswith("No such file or directory"), doc
    log = (home / "logs" / f"{added.task.id}.log").read_text()
    assert "Traceback" not in log and "error: No such file or directory" in log
