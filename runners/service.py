"""Ready-made Supervisor and systemd configurations that keep ``wait-queue`` alive.

What they start must leave a home that ``hostctl doctor`` passes, and give the tasks the
back-end user's environment:

- wait-queue's own stdout and stderr (warnings and errors only: what it does goes to
  ``HOME/logs/hostctl.log``, a file it makes itself) stay with the supervisor: Supervisor's
  AUTO log in its ``childlogdir`` (``supervisorctl tail hostctl-wait-queue``), systemd's
  journal. Never a file in the home: supervisord runs as root and would create it as root
  with mode 0644, which the back-end user can neither repair nor remove.
- HOME, USER and LOGNAME of the back-end user, a PATH (hostctl's folder first, then the
  system's), ``HOSTCTL_HOME`` and ``LANG``: supervisord hands its own (root's) environment
  on, and every task inherits wait-queue's. systemd sets HOME, USER and LOGNAME itself
  from ``User=``.
- Every path is written as its format reads it back: both formats expand ``%`` (doubled
  here); systemd's ``ExecStart=`` and ``Environment=`` take C-style quoting and ``ExecStart=``
  expands ``$``; Supervisor's ``command=`` is split like a shell line, but its parser cuts
  a value at `` ;`` or `` #`` and its ``environment=`` cannot hold a ``"``. What a format
  cannot carry is refused in one line, never written wrong.
"""

from __future__ import annotations

import getpass
import grp
import pwd
import re
import shlex

from hostctl.errors import InvalidInput, NotFound
from hostctl.paths import Paths
from hostctl.runners.crontab import hostctl_argv, line_safe, search_path

STOP_MARGIN = 30  # seconds on top of the longest task timeout and the kill grace
LANG = "C.UTF-8"
# configparser (Supervisor's) ends a value at ';' or '#' after white space, quotes or not
_SUPERVISOR_COMMENT = re.compile(r"\s[;#]")


def _argv(paths: Paths, max_runtime: float) -> list[str]:
    return [*hostctl_argv(), "--home", str(paths.home), "wait-queue",
            "--max-runtime", f"{max_runtime:g}"]


def _supervisor_text(what: str, text: str) -> str:
    """``text`` as a Supervisor value: checked, with ``%`` doubled."""
    line_safe(what, text)
    if _SUPERVISOR_COMMENT.search(text) or text != text.strip():
        raise InvalidInput(f"{what} {text!r} cannot go into a Supervisor configuration (its "
                           "parser cuts a value at ' ;' or ' #' and trims white space at "
                           "either end); choose another path")
    return text.replace("%", "%%")


def _supervisor_env(pairs: list[tuple[str, str]]) -> str:
    out = []
    for key, value in pairs:
        # Supervisor reads KEY="value" with no escapes and strips quotes at either end
        if '"' in value or value.endswith("'"):
            raise InvalidInput(f"{key} {value!r} cannot go into Supervisor's environment= "
                               "(a double quote, or a single quote at its end); choose "
                               "another path")
        out.append(f'{key}="{_supervisor_text(key, value)}"')
    return ",".join(out)


def supervisor(paths: Paths, longest_task: float, grace: float, max_runtime: float,
               user: str | None = None) -> str:
    user = user or getpass.getuser()
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise NotFound(f"no user {user!r}: the section runs wait-queue as that user, with "
                       "its home directory as HOME; create the user first") from None
    argv = _argv(paths, max_runtime)
    command = " ".join(shlex.quote(a) for a in argv)
    env = _supervisor_env([
        ("HOME", account.pw_dir), ("USER", user), ("LOGNAME", user),
        ("PATH", search_path(argv[0])), ("HOSTCTL_HOME", str(paths.home)), ("LANG", LANG),
    ])
    return f"""[program:hostctl-wait-queue]
command={_supervisor_text("the command", command)}
user={_supervisor_text("the user", user)}
directory={_supervisor_text("the home", str(paths.home))}
environment={env}
autostart=true
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs={int(longest_task + grace + STOP_MARGIN)}
stopasgroup=true
killasgroup=true
redirect_stderr=true
; wait-queue logs what it does to HOME/logs/hostctl.log; here go only its warnings and
; errors (supervisorctl tail hostctl-wait-queue), in supervisord's childlogdir: a log
; file supervisord made in the home would be root's, and hostctl doctor would fail
stdout_logfile=AUTO
"""


def logrotate(paths: Paths, user: str | None = None) -> str:
    """A logrotate(8) stanza for the home's logs: hostctl.log, weekly, 8 kept, compressed;
    the new file made 0600 for the back-end user (wait-queue opens it at its next line,
    no signal needed). The tasks' own logs are not rotated: task_gc removes each with its
    task, after ``[queues.task_gc] retention_days``."""
    user = user or getpass.getuser()
    try:
        account = pwd.getpwnam(user)
        group = grp.getgrgid(account.pw_gid).gr_name
    except KeyError:
        raise NotFound(f"no user {user!r} (or no group of its own): the stanza makes the "
                       "new log file that user's; create the user first") from None
    log = str(paths.logs / "hostctl.log")
    line_safe("the log's path", log)
    if any(c in log for c in '"\\{}') or any(c.isspace() for c in user + group):
        raise InvalidInput(f"the log's path {log!r} cannot go into a logrotate stanza (a "
                           "quote, a backslash or a brace); choose another home")
    return f"""# hostctl's own log ({log}); install as /etc/logrotate.d/hostctl
"{log}" {{
    weekly
    rotate 8
    compress
    delaycompress
    missingok
    notifempty
    su {user} {group}
    create 0600 {user} {group}
}}
"""


def _systemd_word(what: str, text: str, dollars: bool) -> str:
    """One double-quoted word (systemd.syntax(7)); ``dollars``: ``$NAME`` is expanded
    there (ExecStart='s arguments), so a ``$`` is written ``$$``."""
    line_safe(what, text)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if dollars:
        escaped = escaped.replace("$", "$$")
    return f'"{escaped}"'


def _systemd_path(what: str, text: str) -> str:
    """A bare path setting (WorkingDirectory=): no quoting there, only specifiers."""
    line_safe(what, text)
    if text != text.strip():
        raise InvalidInput(f"{what} {text!r} cannot go into a systemd unit (white space at "
                           "either end is trimmed); choose another path")
    return text.replace("%", "%%")


def systemd(paths: Paths, longest_task: float, grace: float, max_runtime: float,
            user: str | None = None) -> str:
    user = user or getpass.getuser()
    argv = _argv(paths, max_runtime)
    if any(c in argv[0] for c in "\"'\\"):
        # systemd refuses such an executable name ("contains special characters")
        raise InvalidInput(f"the command {argv[0]!r} cannot go into a systemd unit (a quote "
                           "or a backslash in the executable's path); run hostctl from "
                           "another path")
    # systemd expands $NAME in the arguments, not in the executable's path
    command = " ".join(_systemd_word("the command", a, dollars=i > 0)
                       for i, a in enumerate(argv))
    # HOME, USER and LOGNAME come from User= (systemd.exec(5))
    env = " ".join(
        _systemd_word(key, f"{key}={value}", dollars=False)
        for key, value in (("PATH", search_path(argv[0])),
                           ("HOSTCTL_HOME", str(paths.home)), ("LANG", LANG)))
    return f"""[Unit]
Description=hostctl wait-queue (runs queued hosting tasks)
After=network.target

[Service]
Type=simple
User={_systemd_path("the user", user)}
Environment={env}
WorkingDirectory={_systemd_path("the home", str(paths.home))}
ExecStart={command}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=2
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={int(longest_task + grace + STOP_MARGIN)}

[Install]
WantedBy=multi-user.target
"""

