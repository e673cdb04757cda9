"""Ready-made Supervisor and systemd configurations that keep ``wait-queue`` alive."""

from __future__ import annotations

import getpass
import shlex

from hostctl.paths import Paths
from hostctl.queues.crontab import hostctl_argv

STOP_MARGIN = 30  # seconds on top of the longest task timeout and the kill grace


def _argv(paths: Paths, max_runtime: float) -> list[str]:
    return [*hostctl_argv(), "--home", str(paths.home), "wait-queue",
            "--max-runtime", f"{max_runtime:g}"]


def supervisor(paths: Paths, longest_task: float, grace: float, max_runtime: float,
               user: str | None = None) -> str:
    user = user or getpass.getuser()
    command = " ".join(shlex.quote(a) for a in _argv(paths, max_runtime))
    log = paths.logs / "wait-queue.log"
    return f"""[program:hostctl-wait-queue]
command={command}
user={user}
directory={paths.home}
environment=HOSTCTL_HOME="{paths.home}"
autostart=true
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs={int(longest_task + grace + STOP_MARGIN)}
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={log}
"""


def systemd(paths: Paths, longest_task: float, grace: float, max_runtime: float,
            user: str | None = None) -> str:
    user = user or getpass.getuser()
    command = " ".join(shlex.quote(a) for a in _argv(paths, max_runtime))
    return f"""[Unit]
Description=hostctl wait-queue (runs queued hosting tasks)
After=network.target

[Service]
Type=simple
User={user}
Environment=HOSTCTL_HOME={paths.home}
WorkingDirectory={paths.home}
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
