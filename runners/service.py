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
- The user: ``--user``, else the home's owner (else the user running this); never
  root unless asked by name (``--user root``): a unit or section that silently ran the
  back end as root would write a home only root could repair.
- systemd: ``Type=notify`` (wait-queue says ``READY=1`` once it listens) with a watchdog
  (``WatchdogSec=``: a loop that stops coming round is killed and started again), and the
  hardening options the configured tasks can live with (:func:`hardening_for`): each one
  left out is named in a comment of the unit, with the reason.
- Every path is written as its format reads it back: both formats expand ``%`` (doubled
  here); systemd's ``ExecStart=`` and ``Environment=`` take C-style quoting and ``ExecStart=``
  expands ``$``; Supervisor's ``command=`` is split like a shell line, but its parser cuts
  a value at `` ;`` or `` #`` and its ``environment=`` cannot hold a ``"``. What a format
  cannot carry is refused in one line, never written wrong.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
from dataclasses import dataclass

from hostctl.errors import HostctlError, InvalidInput, NotFound
from hostctl.paths import Paths
from hostctl.runners.crontab import hostctl_argv, line_safe, search_path
from hostctl.runners.home import Home
from hostctl.runners.notify import stop_wait

STOP_MARGIN = 30  # seconds on top of the longest task timeout, the kill grace, the notices
WATCHDOG = 120  # seconds: a daemon loop that has not come round in that long is hung
UNIT = "hostctl-wait-queue.service"
LANG = "C.UTF-8"
# configparser (Supervisor's) ends a value at ';' or '#' after white space, quotes or not
_SUPERVISOR_COMMENT = re.compile(r"\s[;#]")


def backend_user(paths: Paths, user: str | None) -> str:
    """``user``, else the home's owner, else the user running this; root only by name."""
    if user is not None:
        return user
    try:
        uid = os.stat(paths.home).st_uid
    except OSError:
        uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        raise NotFound(f"the home's owner (uid {uid}) has no name; pass --user") from None
    if uid == 0:
        raise InvalidInput("wait-queue would run as root (the home's owner, or the user "
                           "running this): pass --user with the back-end user that owns "
                           "the home (docs/deploy.md), or --user root if that is meant")
    return name


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


def stop_budget(longest_task: float, grace: float, sender_wait: float) -> int:
    """Seconds a stop may take before the service manager kills what is left: the
    running tasks' end (the longest task timeout, then the kill grace), then the wait for
    the notices' sender's request in flight (``sender_wait``: :func:`notify.stop_wait`),
    and STOP_MARGIN."""
    return int(longest_task + grace + sender_wait + STOP_MARGIN)


def supervisor(paths: Paths, longest_task: float, grace: float, max_runtime: float,
               user: str | None = None, *, sender_wait: float) -> str:
    user = backend_user(paths, user)
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
stopwaitsecs={stop_budget(longest_task, grace, sender_wait)}
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
    user = backend_user(paths, user)
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
    if text.endswith("\\"):
        # the unit's parser reads a backslash at the end of a line as "continued below"
        raise InvalidInput(f"{what} {text!r} cannot go into a systemd unit (a backslash at "
                           "its end joins the next line to it); choose another path")
    return text.replace("%", "%%")


#: programs that gain privileges (set-uid): NoNewPrivileges= would stop them
PRIVILEGED_PROGRAMS = frozenset({"sudo", "doas", "su", "pkexec"})
#: what ProtectHome= hides (read-only here: hostctl itself may be installed there)
PERSONAL_FOLDERS = ("/home", "/root", "/run/user")
TEMP_FOLDERS = ("/tmp", "/var/tmp")


@dataclass(frozen=True)
class Hardening:
    """Which hardening options go into the unit: each field is '' (the option is set) or
    why it is left out."""

    no_new_privileges: str = ""
    protect_system: str = ""
    protect_home: str = ""
    private_tmp: str = ""

    def left_out(self) -> list[tuple[str, str]]:
        options = (("NoNewPrivileges=yes", self.no_new_privileges),
                   ("ProtectSystem=full", self.protect_system),
                   ("ProtectHome=read-only", self.protect_home),
                   ("PrivateTmp=yes", self.private_tmp))
        return [(option, why) for option, why in options if why]


def _gains_privileges(command: str | list[str] | tuple[str, ...]) -> bool:
    try:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
    except ValueError:
        return False
    return bool(argv) and os.path.basename(argv[0]) in PRIVILEGED_PROGRAMS


def _under(path: str, folders: tuple[str, ...]) -> bool:
    clean = os.path.normpath(path) if path.startswith("/") else ""
    return any(clean == f or clean.startswith(f + "/") for f in folders)


def hardening_for(home: Home) -> Hardening:
    """What the tasks this home is configured for (its servers, platforms and command
    task types) cannot live with:

    - a server that runs PHP sites (``php_service_type`` php-fpm) or names a
      ``privileged_command``: the privileged helper goes through sudo (NoNewPrivileges=
      stops it) and writes users and PHP-FPM pools under /etc (ProtectSystem= makes it
      read-only);
    - an ``http_restart_cmd`` or a command task type that starts with sudo (doas, su,
      pkexec): NoNewPrivileges=;
    - a platform whose root is under /home, /root or /run/user: ProtectHome=;
    - a server whose database socket folder (``db_host``) is under /tmp or /var/tmp, or
      the home or hostctl itself there: PrivateTmp= (it would see a private, empty /tmp).

    Contexts that cannot be read leave out NoNewPrivileges= and ProtectSystem=: a unit
    that runs beats a hardened one that breaks the tasks."""
    helper: list[str] = []
    sudo: list[str] = []
    personal: list[str] = []
    temp = [f"{what} {path}" for what, path in (("the home", str(home.paths.home)),
                                                    ("hostctl", hostctl_argv()[0]))
            if _under(path, TEMP_FOLDERS)]
    try:
        for server in home.store.of_type("server"):
            name = server.display_name
            if (server.get("php_service_type") == "php-fpm"
                    or str(server.get("privileged_command") or "").strip()):
                helper.append(name)
            if _gains_privileges(str(server.get("http_restart_cmd") or "")):
                sudo.append(f"{name}'s http_restart_cmd")
            if _under(str(server.get("db_host") or ""), TEMP_FOLDERS):
                temp.append(f"{name}'s db_host")
        for platform in home.store.of_type("platform"):
            if _under(str(platform.get("root") or ""), PERSONAL_FOLDERS):
                personal.append(f"{platform.display_name}'s root")
        for ttype in home.registry.types.values():
            if ttype.command is not None and _gains_privileges(ttype.command.command):
                sudo.append(f"task type {ttype.name}")
    except HostctlError as exc:
        why = f"the home's contexts or config.toml could not be read ({exc.message})"
        return Hardening(no_new_privileges=why, protect_system=why)

    def said(names: list[str], what: str) -> str:
        return f"{', '.join(names)} {what}" if names else ""

    runs_php = said(helper, "run(s) PHP sites through the privileged helper, through sudo")
    return Hardening(
        no_new_privileges="; ".join(x for x in (
            runs_php, said(sudo, "start(s) with a set-uid program (sudo)")) if x),
        protect_system=said(helper, "run(s) PHP sites: the privileged helper writes users "
                                    "and PHP-FPM pools under /etc"),
        protect_home=said(personal, "lie(s) under /home, /root or /run/user"),
        private_tmp=said(temp, "lie(s) under /tmp or /var/tmp, which PrivateTmp= hides"),
    )


def _hardening_lines(paths: Paths, hardening: Hardening) -> list[str]:
    lines = ["# hardening (docs/deploy.md): what the configured tasks can live with"]
    if not hardening.no_new_privileges:
        lines.append("NoNewPrivileges=yes")
    if not hardening.protect_system:
        lines.append("ProtectSystem=full")
    if not hardening.protect_home:
        lines.append("ProtectHome=read-only")
    if not (hardening.protect_system and hardening.protect_home):
        # the home stays writable whatever the options above make read-only
        lines.append("ReadWritePaths=" + _systemd_word("the home", str(paths.home),
                                                       dollars=False))
    if not hardening.private_tmp:
        lines.append("PrivateTmp=yes")
    for option, why in hardening.left_out():
        lines.append(f"# left out: {option}: {line_safe('a reason', why)}")
    return lines


def render(home: Home, kind: str, user: str | None, max_runtime: float) -> str:
    """The Supervisor section (``kind`` "supervisor") or the systemd unit that keeps
    wait-queue running on ``home``, from its configuration and contexts, read only:
    ``hostctl setup`` renders what it installs as root itself, never taking the text from
    a process of the back-end user (whose Python may load that user's own code)."""
    registry = home.registry
    longest = max([registry.timeout(t) for t in registry.types.values()] or [0.0])
    grace = home.config.worker.kill_grace
    sender_wait = stop_wait(home.config)
    if kind == "supervisor":
        return supervisor(home.paths, longest, grace, max_runtime, user,
                          sender_wait=sender_wait)
    return systemd(home.paths, longest, grace, max_runtime, user, hardening_for(home),
                   sender_wait=sender_wait)


def systemd(paths: Paths, longest_task: float, grace: float, max_runtime: float,
            user: str | None = None, hardening: Hardening | None = None, *,
            sender_wait: float) -> str:
    """The unit; ``hardening`` None: every option (see :func:`hardening_for`);
    ``sender_wait``: how long the daemon's stop waits for its notices' sender."""
    user = backend_user(paths, user)
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
    try:
        group_name = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
        group = [f"Group={_systemd_path('the group', group_name)}"]
    except KeyError:
        group = []  # no such user here (yet): systemd takes the user's own group
    service = "\n".join([
        "Type=notify",
        "NotifyAccess=main",
        f"WatchdogSec={WATCHDOG}s",
        "TimeoutStartSec=5min",
        f"User={_systemd_path('the user', user)}",
        *group,
        f"Environment={env}",
        f"WorkingDirectory={_systemd_path('the home', str(paths.home))}",
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "RestartSec=2",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_budget(longest_task, grace, sender_wait)}",
        *_hardening_lines(paths, hardening or Hardening()),
    ])
    return f"""[Unit]
Description=hostctl wait-queue (runs queued hosting tasks)
After=network.target

[Service]
{service}

[Install]
WantedBy=multi-user.target
"""
