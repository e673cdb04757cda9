"""One error root, one exit-status enum.

Core code raises a subclass of :class:`HostctlError`; the root command (``cli/main.py``) is
the one place that turns it into a one-line message on stderr and the exit code it carries.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Every exit code hostctl uses (README.md, "Exit codes")."""

    OK = 0  # success, a task that ended in `warning` included
    ERROR = 1  # a task ended in `error`, or an operation failed at run time
    USAGE = 2  # usage, invalid input or a refused request
    INTERNAL = 70  # a bug in hostctl (EX_SOFTWARE); rerun with --traceback
    TEMPFAIL = 75  # notify-send: notices were due, none could be taken up now (EX_TEMPFAIL)
    TIMED_OUT = 124  # ``task wait --timeout``: a task had not ended (timeout(1)'s code)
    INTERRUPTED = 130  # interrupted by the user (SIGINT), or a task waited for was cancelled

    @classmethod
    def of_outcome(cls, label: str) -> ExitStatus:
        """A finished task's status as an exit status (provision-TYPE, ``task wait``,
        ``task log --follow``): its run was interrupted when it was cancelled."""
        if label in ("success", "warning"):
            return cls.OK
        return cls.INTERRUPTED if label == "cancelled" else cls.ERROR

    @classmethod
    def of_outcomes(cls, labels: list[str]) -> ExitStatus:
        """The worst of several: an error over a cancel over success."""
        found = {cls.of_outcome(label) for label in labels}
        for worst in (cls.ERROR, cls.INTERRUPTED):
            if worst in found:
                return worst
        return cls.OK


class HostctlError(Exception):
    """Root of every error hostctl reports to its user."""

    exit_status: ExitStatus = ExitStatus.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(HostctlError):
    """A value given on the command line or in a request is not acceptable."""


class InvalidName(InvalidInput):
    """A context name breaks the naming rules."""


class UnknownField(InvalidInput):
    """A context field that the context's type does not have."""


class NotJudgedYet(InvalidInput):
    """A queued task this process cannot judge (its type is not in the configuration it
    loaded): the task waits, queued, for a configuration that knows its type."""


class NotFound(HostctlError):
    """A named thing (context, task, queue) does not exist."""


class Conflict(HostctlError):
    """A request that contradicts what is stored (wrong type, still referenced, ...)."""


class MalformedFile(HostctlError):
    """A file under the home cannot be read as what it should be."""


class NewerFormat(HostctlError):
    """A file (the home's marker, a context, a task, ...) written by a newer hostctl, in a
    format this one does not read: refused, and nothing is written or "repaired"."""


class ForeignHome(HostctlError):
    """The home belongs to another user; hostctl will not write into it."""


class OperationFailed(HostctlError):
    """Something that should have worked did not (I/O, a child process, a task)."""

    exit_status = ExitStatus.ERROR


class Unreachable(OperationFailed):
    """A service that hostctl itself needs cannot be reached now (the cluster's database
    restarting, say): what waits for it is tried again later, and fails for it never."""


class ProblemsFound(HostctlError):
    """A check (``hostctl doctor``) found problems that are still there."""

    exit_status = ExitStatus.ERROR
