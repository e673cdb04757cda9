"""How one attempt of a task runs, wherever the task was queued.

``prepare`` applies the task's context options (provision-save) and builds what the child
needs; ``launch`` forks the child in its own process group (see queues/process.py), its
stdout and stderr on a pipe the caller reads line by line into the task's log; ``judge``
turns the child's exit and its structured result into the attempt's outcome.

Exit codes a task may use: 0 success (``warning`` if its result lists warnings), 75
(EX_TEMPFAIL) "try again later", anything else an error. The result is a JSON object the
task writes to the file named by ``$HOSTCTL_RESULT`` (a built-in fills ``rc.result``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hostctl.config import PLACEHOLDER
from hostctl.contexts.store import Context, ContextStore
from hostctl.errors import HostctlError, InvalidInput
from hostctl.paths import Paths
from hostctl.provision.registry import (
    Registry,
    RunContext,
    TaskType,
    context_values,
    write_result,
)
from hostctl.queues.process import die_with_parent
from hostctl.queues.task import Envelope

EX_TEMPFAIL = 75
MAX_RESULT_BYTES = 64 * 1024


@dataclass(frozen=True)
class Prepared:
    ttype: TaskType
    context: Context
    argv: tuple[str, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # success, warning, error, retry, cancelled
    exit: int | None
    reason: str
    result: Mapping[str, Any]


def prepare(env: Envelope, registry: Registry, store: ContextStore, paths: Paths,
            result_path: str) -> Prepared:
    """Save the context options, then build the argv or check the function."""
    ttype, ctx = registry.validate(env, store)
    if env.context_options:
        ctx = store.save(ctx.name, dict(env.context_options)).context
    environ = {
        **os.environ,
        "HOSTCTL_HOME": str(paths.home),
        "HOSTCTL_TASK_ID": env.id,
        "HOSTCTL_TASK_TYPE": env.type,
        "HOSTCTL_CONTEXT": ctx.display_name,
        "HOSTCTL_CONTEXT_TYPE": ctx.type,
        "HOSTCTL_RESULT": result_path,
    }
    if ttype.command is None:
        return Prepared(ttype, ctx, (), environ)
    values = context_values(ctx, store)
    values["task_id"] = env.id
    for key, value in env.options.items():
        values[f"option.{key}"] = value
    argv = tuple(_substitute(item, values) for item in ttype.command.command)
    for key, value in values.items():
        if not key.startswith("option."):
            environ[f"HOSTCTL_FIELD_{key.upper()}"] = value
    for key, value in env.options.items():
        environ[f"HOSTCTL_OPTION_{key.upper().replace('-', '_')}"] = value
    environ.update(ttype.command.env)
    return Prepared(ttype, ctx, argv, environ)


def _substitute(item: str, values: Mapping[str, str]) -> str:
    def one(match: Any) -> str:
        key = match.group(1)
        if key not in values:
            if key.startswith("option."):
                return ""  # a declared option that was not given
            raise InvalidInput(f"the command names {{{key}}}, which this context lacks")
        return values[key]

    return PLACEHOLDER.sub(one, item)


def launch(prep: Prepared, env: Envelope, store: ContextStore, paths: Paths,
           result_path: str) -> tuple[int, int]:
    """Start the child; return (pid, fd to read its output from)."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            die_with_parent()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            os.close(read_fd)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            if prep.argv:
                try:
                    os.execvpe(prep.argv[0], list(prep.argv), dict(prep.environ))
                except OSError as exc:
                    print(f"hostctl: cannot run {prep.argv[0]}: {exc.strerror}", flush=True)
                    code = 127
            else:
                code = _run_function(prep, env, store, paths, result_path)
        except BaseException:  # noqa: BLE001 - the child must exit, whatever happened
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _run_function(prep: Prepared, env: Envelope, store: ContextStore, paths: Paths,
                  result_path: str) -> int:
    os.environ.update(prep.environ)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    rc = RunContext(env.id, env.type, prep.context, dict(env.options), paths, store)
    assert prep.ttype.function is not None
    try:
        code = prep.ttype.function(rc)
    except HostctlError as exc:
        print(f"error: {exc.message}", flush=True)
        rc.result.setdefault("error", exc.message)
        code = 1
    write_result(result_path, rc.result)
    return int(code or 0)


def read_result(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_RESULT_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        return {"result_error": f"cannot read the result: {exc.strerror}"}
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    if not data.strip():
        return {}
    if len(data) > MAX_RESULT_BYTES:
        return {"result_error": f"the result is larger than {MAX_RESULT_BYTES} bytes"}
    try:
        doc = json.loads(data)
    except ValueError:
        return {"result_error": "the result is not JSON"}
    return doc if isinstance(doc, dict) else {"value": doc}


def judge(wait_status: int, result: Mapping[str, Any], *, cancelled: bool, timed_out: float,
          attempts_left: bool) -> Verdict:
    """The outcome of an attempt, from how its child ended and what it reported."""
    if os.WIFSIGNALED(wait_status):
        code = None
        sig = os.WTERMSIG(wait_status)
        how = f"killed by signal {sig} ({signal.Signals(sig).name})"
    else:
        code = os.waitstatus_to_exitcode(wait_status)
        how = f"exited with status {code}"
    if cancelled:
        return Verdict("cancelled", code, f"cancelled; {how}", result)
    if timed_out:
        return Verdict("error", code, f"timed out after {timed_out:g} s; {how}", result)
    if code == 0:
        warnings = result.get("warnings")
        if (isinstance(warnings, list) and warnings) or result.get("status") == "warning":
            return Verdict("warning", 0, "finished with warnings", result)
        return Verdict("success", 0, "", result)
    if code == EX_TEMPFAIL:
        if attempts_left:
            return Verdict("retry", code, f"{how}: asked to be tried again", result)
        return Verdict("error", code, f"{how}: asked to be tried again, no attempts left",
                       result)
    return Verdict("error", code, how, result)
