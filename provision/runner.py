"""How one attempt of a task runs, wherever the task was queued.

``prepare`` applies the task's context options (provision-save) and builds what the child
needs; ``launch`` starts the child in its own session and process group (see
src/hostctl/process.py), its stdout and stderr on a pipe the caller reads line by line into the
task's log; ``judge`` turns the child's exit and its structured result into the attempt's
outcome.

A command task is started with ``posix_spawn`` (glibc's ``clone(CLONE_VM|CLONE_VFORK)``):
the worker's memory is not copied, so the launch costs the same whatever the worker's size,
where a ``fork`` of a worker of ~37 MB costs several milliseconds. The spawn gives the child
its own session (``setsid``), ``/dev/null`` on stdin, the pipe on stdout and stderr, the
default action for the signals the worker catches or ignores (INT, TERM, HUP, PIPE, XFSZ)
and an empty signal mask; every other descriptor of the worker is close-on-exec. A command
that cannot be found or started (or a worker whose standard descriptors are closed) takes
the forked path below, which reports the reason in the task's log and exits 127, as before.
A built-in or plugin type runs Python code of the worker, so it needs a ``fork``: its child
also asks the kernel to kill it with its worker (``PR_SET_PDEATHSIG``).

Exit codes a task may use: 0 success (``warning`` if its result lists warnings), 75
(EX_TEMPFAIL) "try again later", anything else an error. The result is a JSON object the
task writes to the file named by ``$HOSTCTL_RESULT`` (a built-in fills ``rc.result``).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hostctl.config import PLACEHOLDER
from hostctl.contexts.names import parse_name
from hostctl.contexts.schema import secret_field_names
from hostctl.contexts.store import Context, ContextStore
from hostctl.errors import HostctlError, InvalidInput, NotFound
from hostctl.paths import Paths
from hostctl.process import die_with_parent
from hostctl.provision import backup
from hostctl.provision.registry import Registry
from hostctl.provision.secrets import SecretStore
from hostctl.provision.tasktype import (
    RunContext,
    TaskType,
    context_values,
    write_result,
)
from hostctl.text import printable

if TYPE_CHECKING:
    from hostctl.provision.tasktype import TaskRequest

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


def prepare(env: TaskRequest, registry: Registry, store: ContextStore, paths: Paths,
            result_path: str) -> Prepared:
    """Save the context options, then build the argv or check the function."""
    ttype, ctx = registry.validate(env, store)
    if env.context_options:
        ctx = store.save(ctx.name, dict(env.context_options)).context
    environ = {
        **_worker_environ(),
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


_environ_cache: tuple[dict[bytes, bytes], dict[str, str]] = ({}, {})


def _worker_environ() -> dict[str, str]:
    """A copy of ``os.environ``, decoded again only when the environment has changed:
    decoding every variable costs ~50 µs a task; comparing the raw bytes, ~1 µs."""
    global _environ_cache
    raw = getattr(os.environ, "_data", None)  # CPython's bytes mapping behind os.environ
    if not isinstance(raw, dict):
        return dict(os.environ)
    if raw != _environ_cache[0]:
        _environ_cache = (dict(raw), dict(os.environ))
    return dict(_environ_cache[1])


def _substitute(item: str, values: Mapping[str, str]) -> str:
    def one(match: Any) -> str:
        key = match.group(1)
        if key not in values:
            if key.startswith("option."):
                return ""  # a declared option that was not given
            raise InvalidInput(f"the command names {{{key}}}, which this context lacks")
        return values[key]

    return PLACEHOLDER.sub(one, item)


# Reset in a spawned command: what the worker catches (INT, TERM, HUP: an exec resets
# these anyway) or ignores (PIPE, as every Python process does; HUP under nohup).
_SPAWN_SIGDEF = tuple(getattr(signal, name) for name in
                      ("SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE", "SIGXFSZ")
                      if hasattr(signal, name))


def launch(prep: Prepared, env: TaskRequest, store: ContextStore, paths: Paths,
           result_path: str) -> tuple[int, int]:
    """Start the child; return (pid, fd to read its output from)."""
    read_fd, write_fd = os.pipe()
    if prep.argv and write_fd > 2:
        try:
            pid = _spawn(prep, write_fd)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid is not None:
            os.close(write_fd)
            return pid, read_fd
    return _fork(prep, env, store, paths, result_path, read_fd, write_fd)


def _spawn(prep: Prepared, write_fd: int) -> int | None:
    """posix_spawn the command in a new session; None if it cannot be spawned (then the
    forked path runs it and reports why in the log)."""
    executable = _which(prep.argv[0], prep.environ)
    if executable is None:
        return None
    try:
        return os.posix_spawn(
            executable, list(prep.argv), prep.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, write_fd, 1),
                          (os.POSIX_SPAWN_DUP2, write_fd, 2),
                          (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
            setsid=True, setsigdef=_SPAWN_SIGDEF, setsigmask=())
    except (OSError, ValueError):  # not found, not executable, a NUL byte: see _fork
        return None


def _which(name: str, environ: Mapping[str, str]) -> str | None:
    """The file ``execvpe`` would run for ``name`` with the task's PATH, if it finds one."""
    if not name or "\0" in name:
        return None
    candidates = [name] if os.sep in name else [
        os.path.join(folder, name) for folder in os.get_exec_path(environ)]
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            return path
    return None


def _fork(prep: Prepared, env: TaskRequest, store: ContextStore, paths: Paths,
          result_path: str, read_fd: int, write_fd: int) -> tuple[int, int]:
    """Fork the worker: for a task function, or a command that could not be spawned."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            die_with_parent(parent)
            if not prep.argv:  # a progress bar goes to the terminal, never to the log
                backup.TERMINAL = backup.terminal_for_progress()
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


def _run_function(prep: Prepared, env: TaskRequest, store: ContextStore, paths: Paths,
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
    except OSError as exc:  # the file system said no (a file gone meanwhile, a full disk)
        what = " ".join(str(x) for x in (exc.strerror or exc, exc.filename) if x)
        print(f"error: {what}", flush=True)
        rc.result.setdefault("error", what)
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
          attempts_left: bool, said: str = "") -> Verdict:
    """The outcome of an attempt, from how its child ended and what it reported. A
    failure's reason says what failed: the ``error`` its result gave, else the last line
    it printed (``said``), after how it ended."""
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
    error = result.get("error")
    what = printable(error)[:300] if isinstance(error, str) and error.strip() else said
    return Verdict("error", code, f"{how}: {what}" if what else how, result)


def secret_values(ctx: Context, store: ContextStore,
                  secrets: SecretStore) -> tuple[bytes, ...]:
    """The secret field values of a context and of the contexts it refers to, longest
    first (to be redacted from task logs); values under 4 bytes are left alone."""
    names = secret_field_names()
    found: set[bytes] = set()
    seen: set[str] = set()
    todo = [ctx]
    while todo:
        cur = todo.pop()
        if cur.name in seen:
            continue
        seen.add(cur.name)
        for key, value in cur.effective(show_secrets=True).items():
            if key in names and isinstance(value, str) and len(value.encode()) >= 4:
                found.add(value.encode())
            elif isinstance(value, str) and value.startswith("@") and len(seen) < 8:
                try:
                    todo.append(store.get(parse_name(value)))
                except (NotFound, InvalidInput):
                    pass
        if cur.type == "site":  # what install made: the site's database password
            found.update(v.encode() for v in secrets.values(cur.name)
                         if len(v.encode()) >= 4)
    return tuple(sorted(found, key=len, reverse=True))
