"""What a provision task function works with: its RunContext, the home's settings, the
secrets it must keep out of its log, and a way to run programs.

Programs (nginx, psql, pg_dump, the platform's own commands) are always run from argv
lists, never through a shell. Their output is read by the task, line by line, and every
secret the task knows of (the site's database password, the database administrator's) is
replaced before the line reaches the task's log: the worker redacts what it knew when the
task started, but a password made during the task is known only here. Secrets reach a
program through its environment or its standard input, never its command line.

A task that is stopped (cancel, timeout: TERM to its process group) raises
:class:`Stopped` where it is, so that the steps it took are undone before it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import IO

from hostctl import config as config_mod
from hostctl.contexts.schema import field_names
from hostctl.errors import OperationFailed
from hostctl.provision.secrets import SecretStore
from hostctl.provision.secretstores import open_secrets
from hostctl.provision.tasktype import RunContext
from hostctl.text import Redactor

REDACTED = "[secret]"
#: environment variables a child must not inherit from the worker: libpq's would point
#: psql at another server, HOSTCTL_RESULT at the task's own result file
_DROP_ENV = ("HOSTCTL_RESULT",)
_DROP_PREFIX = ("PG",)


class Stopped(OperationFailed):
    """The task was told to stop (TERM or INT) while it ran."""


@dataclass(frozen=True)
class Ran:
    code: int
    output: str  # stdout and stderr, redacted


class Job:
    """One run of a provision task function."""

    def __init__(self, rc: RunContext) -> None:
        self.rc = rc
        self.paths = rc.paths
        self.store = rc.store
        self._secrets: set[str] = set()
        self._redactor = Redactor((), REDACTED)

    @cached_property
    def config(self) -> config_mod.Config:
        return config_mod.load(self.paths.config_file, field_names())

    @cached_property
    def secrets(self) -> SecretStore:
        """The sites' records: files under the home, or the cluster's database."""
        return open_secrets(self.paths, self.config.cluster.dsn)

    @property
    def result(self) -> dict[str, object]:
        return self.rc.result

    # -- secrets and output -------------------------------------------------------------

    def hide(self, *values: str) -> None:
        """Keep these values out of everything this task prints."""
        self._secrets.update(v for v in values if v and len(v) >= 4)
        self._redactor = Redactor(self._secrets, REDACTED)

    def redact(self, text: str) -> str:
        """``text`` with each secret replaced where it stands as a whole value (see
        hostctl.text.Redactor: never inside a path or a name that contains it)."""
        return self._redactor.text(text)

    def say(self, message: str) -> None:
        self.rc.say(self.redact(message))

    def warn(self, message: str) -> None:
        self.rc.warn(self.redact(message))

    # -- programs -----------------------------------------------------------------------

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in _DROP_ENV and not k.startswith(_DROP_PREFIX)}
        env.update(extra or {})
        return env

    def run(self, argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None,
            cwd: str | Path | None = None, stdin: str | None = None, log: bool = False,
            check: bool = True) -> Ran:
        """Run ``argv``; with ``log`` its output goes to the task's log as it comes.

        ``env`` is added to the task's environment (minus libpq's variables). A program
        that cannot be started, or (with ``check``) that exits non-zero, raises
        OperationFailed naming ``what`` and the last line it printed.
        """
        argv = [str(a) for a in argv]
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=self.environ(env),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise OperationFailed(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
        try:
            if log:
                assert proc.stdout is not None
                lines = []
                for raw in proc.stdout:
                    line = self.redact(raw.decode("utf-8", "replace").rstrip("\n"))
                    lines.append(line)
                    self.rc.say(line)
                proc.wait()
                output = "\n".join(lines)
            else:
                out, _ = proc.communicate(stdin.encode() if stdin is not None else None)
                output = self.redact(out.decode("utf-8", "replace"))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if check and proc.returncode != 0:
            last = next((ln for ln in reversed(output.splitlines())
                         if any(c.isalnum() for c in ln)), "")
            raise OperationFailed(f"{what} exited with status {proc.returncode}"
                                  + (f": {last.strip()}" if last else ""))
        return Ran(proc.returncode, output)


@contextmanager
def streamed(job: Job, argv: Sequence[str], *, what: str,
             env: Mapping[str, str] | None = None) -> Iterator[IO[bytes]]:
    """Run ``argv`` and yield its standard output to be read as it comes (a dump going
    straight into an archive); its standard error goes to a private temporary file, so
    neither pipe can fill and stall it. Once the block ends the program must have exited
    0: otherwise OperationFailed names ``what`` and its last line of complaint. A block
    that raises kills the program."""
    import tempfile

    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(argv, env=job.environ(env), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=errors)
        except OSError as exc:
            raise OperationFailed(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
        assert proc.stdout is not None
        try:
            yield proc.stdout
            rest = proc.stdout.read(1)
            if rest:
                raise OperationFailed(f"{what}: its output was not read to the end")
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if proc.returncode != 0:
            errors.seek(0)
            text = job.redact(errors.read(1 << 16).decode("utf-8", "replace"))
            last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
            raise OperationFailed(f"{what} exited with status {proc.returncode}"
                                  + (f": {last}" if last else ""))


@contextmanager
def stoppable() -> Iterator[None]:
    """Turn TERM and INT into :class:`Stopped` while the block runs."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(f"stopped by signal {signal.Signals(signum).name}")

    with _on_stop(stop):
        yield


@contextmanager
def _on_stop(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """TERM and INT go to ``handler`` while the block runs."""
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


class Undo:
    """The steps a task took, undone in reverse order if it fails.

    ``with Undo(job) as undo:`` ... ``undo.add("what", function)`` after each step. When
    the block raises, every step is undone (a failing undo is reported and the others
    still run) and the error goes on.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.steps: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, undo: Callable[[], object]) -> None:
        self.steps.append((what, undo))

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if kind is None:
            return
        reason = getattr(exc, "message", None) or str(exc) or kind.__name__
        self.job.say(f"failed: {reason}; undoing {len(self.steps)} step(s)")
        # a second TERM while undoing must not cut the undo short
        with _ignoring_stop():
            for what, undo in reversed(self.steps):
                try:
                    undo()
                    self.job.say(f"undone: {what}")
                except Exception as err:  # noqa: BLE001 - report it, undo the others
                    message = getattr(err, "message", None) or str(err)
                    self.job.warn(f"could not undo {what}: {message}")


@contextmanager
def _ignoring_stop() -> Iterator[None]:
    # a handler, not SIG_IGN: an ignored signal would stay ignored in the programs the
    # undo runs, while a handler is reset to the default when they are exec'd
    def note(signum: int, frame: FrameType | None) -> None:
        pass

    with _on_stop(note):
        yield
