"""``HOME/config.toml``, parsed once at the edge into frozen, validated objects.

A missing file means the defaults. Example::

    [worker]
    concurrency = 2          # tasks at once (different contexts only)
    max_attempts = 3         # runs of one task, lost workers and exit 75 included
    backoff_base = 10        # seconds before the first retry; doubles each time
    backoff_max = 3600
    timeout = 3600           # default per-task timeout, seconds
    kill_grace = 10          # TERM, then KILL this many seconds later

    [frontend]
    context_options = ["aliases", "language"]  # fields a drop may set (default below)

    [provision]              # the built-in site tasks (docs/provision.md)
    require_disable_before_delete = true
    backup_keep_days = 0     # a site's backup task removes its backups older than this
    backup_keep = 0          # ... and keeps at most this many (0: no limit)

    [tasks.cron]             # a command type: an argv template, never a shell
    command = ["/usr/bin/php", "{root}/cron.php", "--uri={uri}"]
    context_types = ["site"]
    options = { verbose = "say more" }   # options a front end may pass
    timeout = 600
    rerun_on_loss = true
    env = { APP_ENV = "prod" }

Placeholders in ``command`` items: ``{name}`` (the context name without ``@``),
``{context}`` (with ``@``), ``{type}``, ``{task_id}``, any field of the context (a site
also gets ``{root}`` from its platform), and ``{option.KEY}`` for a declared option.
"""

from __future__ import annotations

import os
import re
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from hostctl.errors import MalformedFile

PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[a-z0-9_-]+)?)\}")
TASK_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")


class WorkerSettings(NamedTuple):
    concurrency: int = 2
    max_attempts: int = 3
    backoff_base: float = 10.0
    backoff_max: float = 3600.0
    timeout: float = 3600.0
    kill_grace: float = 10.0
    #: tasks wait while the 1-minute load average is above this many times the number of
    #: CPUs (0: never wait)
    max_load: float = 0.0


class SpoolSettings(NamedTuple):
    #: file locks are not reliable on NFS or CIFS; refuse such a spool unless this is set
    allow_network_filesystem: bool = False


#: The context fields a front end's submission (a drop) may set as context options: what a
#: panel's user legitimately changes on a site. Never a secret, a path, a reference to
#: another context, a guard field (protected, locked) or a field that does what a guarded
#: task does (site_enabled is the disable task's, which `protected` refuses).
FRONTEND_CONTEXT_OPTIONS = ("aliases", "redirection", "language", "profile", "client_name",
                            "ssl_enabled", "admin_email")


class FrontendSettings(NamedTuple):
    context_options: tuple[str, ...] = FRONTEND_CONTEXT_OPTIONS


class ProvisionSettings(NamedTuple):
    #: a site must be disabled before it can be deleted (Aegir's default)
    require_disable_before_delete: bool = True
    #: the backup task removes the site's backups older than this many days (0: never)
    backup_keep_days: float = 0.0
    #: the backup task keeps at most this many backups of the site (0: no limit)
    backup_keep: int = 0


@dataclass(frozen=True)
class CommandTask:
    name: str
    command: tuple[str, ...]
    context_types: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)
    help: str = ""
    timeout: float | None = None
    max_attempts: int | None = None
    rerun_on_loss: bool = True
    env: Mapping[str, str] = field(default_factory=dict)


class QueueSettings(NamedTuple):
    """One periodic queue, as in Aegir's hook_hosting_queues (same defaults)."""

    name: str
    type: str = "serial"  # serial, batch or spread
    frequency: float = 300.0
    items: int = 5
    enabled: bool = True
    threshold: int = 100
    min_threads: int = 1
    max_threads: int = 6
    retention_days: float = 30.0  # task_gc only


DEFAULT_QUEUES: Mapping[str, QueueSettings] = {
    "tasks": QueueSettings("tasks", "serial", 60.0, 5),
    "cron": QueueSettings("cron", "batch", 3600.0, 5, min_threads=6, max_threads=12),
    "backup": QueueSettings("backup", "batch", 86400.0, 5, enabled=False, min_threads=1,
                            max_threads=6),
    "task_gc": QueueSettings("task_gc", "batch", 3600.0, 20, min_threads=6, max_threads=12),
    # HTTPS certificates renewed before they expire (a site's task does nothing until due)
    "ssl": QueueSettings("ssl", "batch", 86400.0, 5, min_threads=1, max_threads=6),
}


class ClusterSettings(NamedTuple):
    #: the cluster's PostgreSQL, a libpq connection string or URI (docs/cluster.md);
    #: empty: this home stands alone. HOSTCTL_CLUSTER_DSN, when set, wins.
    dsn: str = ""
    #: the server context this host is (``@web1``): its workers take the tasks routed to
    #: it and those routed to no server; empty: every task of the cluster
    #: (``wait-queue --server`` wins)
    server: str = ""
    #: false: this host's workers run no task (a front end's host: they admit its drops
    #: into the cluster and run the periodic queues, which queue tasks for the servers)
    run_tasks: bool = True


CLUSTER_DSN_VAR = "HOSTCTL_CLUSTER_DSN"

#: what an attempt can end as, for [notify.webhooks.NAME] outcomes
OUTCOMES = ("success", "warning", "error", "cancelled", "retry", "lost")


class Webhook(NamedTuple):
    """``[notify.webhooks.NAME]``: POST each matching attempt's end to ``url``, signed
    with HMAC-SHA256 by the key in ``secret_file`` (a private file) when one is given."""

    name: str
    url: str
    secret_file: str = ""
    outcomes: tuple[str, ...] = ("error",)
    types: tuple[str, ...] = ()  # empty: every task type
    timeout: float = 10.0

    def wants(self, type_name: str, outcome: str) -> bool:
        return _matches(self.outcomes, self.types, type_name, outcome)


def _matches(outcomes: tuple[str, ...], types: tuple[str, ...], type_name: str,
             outcome: str) -> bool:
    """Whether a notice asked for this end (no types: every task type)."""
    return outcome in outcomes and (not types or type_name in types)


class Email(NamedTuple):
    """``[notify.email.NAME]``: a mail to ``to`` for each matching attempt's end, through
    the SMTP server at ``smtp`` (HOST:PORT; the local MTA by default)."""

    name: str
    to: tuple[str, ...]
    sender: str = "hostctl@localhost"
    smtp: str = "localhost:25"
    outcomes: tuple[str, ...] = ("error",)
    types: tuple[str, ...] = ()
    timeout: float = 30.0

    def wants(self, type_name: str, outcome: str) -> bool:
        return _matches(self.outcomes, self.types, type_name, outcome)


@dataclass(frozen=True)
class Config:
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    tasks: Mapping[str, CommandTask] = field(default_factory=dict)
    queues: Mapping[str, QueueSettings] = field(default_factory=lambda: dict(DEFAULT_QUEUES))
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    frontend: FrontendSettings = field(default_factory=FrontendSettings)
    provision: ProvisionSettings = field(default_factory=ProvisionSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    webhooks: Mapping[str, Webhook] = field(default_factory=dict)
    emails: Mapping[str, Email] = field(default_factory=dict)
    path: Path | None = None


class FieldNames(NamedTuple):
    """The context fields config.toml may name: every field, and the secret ones. The
    settings sit below the contexts, so the caller brings these (contexts/schema.py's
    ``field_names()``)."""

    known: frozenset[str]
    secret: frozenset[str]


#: how long config.toml must stand unchanged before it is taken for the configuration:
#: an editor that writes it in place leaves it empty, or cut short, for a moment (and a
#: cut between two tables reads as a smaller file that is valid)
SETTLE = 1.0
#: the most a runner waits, at its start, for config.toml to settle
SETTLE_PATIENCE = 5.0


def file_stamp(path: Path) -> tuple[int, ...] | None:
    """What changes with config.toml's content (device, inode, size, mtime, ctime, of
    the file a link leads to); None while there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def unsettled_for(path: Path) -> float:
    """Seconds until ``path`` has stood SETTLE seconds unchanged by the wall clock (0: it
    has), at most SETTLE. A missing file (or a link whose target is being written anew)
    counts from the last change of the folder it would be in; a change dated ahead of the
    clock (a clock set back, a copy that kept a future time) as one just made: whoever
    watches it stand SETTLE seconds on a clock of its own (:func:`wait_settled`, the
    daemon) takes it then."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        try:
            st = os.stat(os.path.dirname(os.path.realpath(path)))
        except OSError:
            return 0.0
    except OSError:
        return 0.0
    age = time.time() - max(st.st_mtime, st.st_ctime)
    return SETTLE if age < 0 else max(0.0, SETTLE - age)


def wait_settled(path: Path, patience: float = SETTLE_PATIENCE) -> bool:
    """Wait, ``patience`` seconds at most, until ``path`` has settled: by the wall clock
    (:func:`unsettled_for`), or seen unchanged for SETTLE seconds here. Whether it did."""
    began = seen_since = time.monotonic()
    seen = file_stamp(path)
    while True:
        now = time.monotonic()
        wait = min(unsettled_for(path), seen_since + SETTLE - now)
        if wait <= 0:
            return True
        if now - began >= patience:
            return False
        time.sleep(min(wait, 0.1, max(0.0, began + patience - now)))
        stamp = file_stamp(path)
        if stamp != seen:
            seen, seen_since = stamp, time.monotonic()


def wait_if_emptied(path: Path) -> bool:
    """At a runner's start: while config.toml is empty (the moment an editor writing it
    in place has cut it to nothing), wait for it to settle as :func:`wait_settled` does;
    a file with content is taken at once (whatever changes after, the daemon takes once
    settled, and nothing is given up for a notice it lacks before a settled look)."""
    try:
        if os.stat(path).st_size > 0:
            return True
    except OSError:
        return True  # none: the defaults, as ever
    return wait_settled(path)


def settled(path: Path, fields: FieldNames, wait: bool = False) -> tuple[Config | None, float]:
    """config.toml read afresh once it has settled (with ``wait``: waited for, as
    :func:`wait_settled`), and not changed while it was read: (it, 0); else (None, the
    seconds to wait before asking again)."""
    if wait:
        if not wait_settled(path):
            return None, SETTLE
    else:
        left = unsettled_for(path)
        if left > 0:
            return None, left
    before = file_stamp(path)
    try:
        config = load(path, fields)
    except MalformedFile:
        return None, SETTLE
    if file_stamp(path) != before:
        return None, SETTLE
    return config, 0.0


def load(path: Path, fields: FieldNames) -> Config:
    """config.toml (missing: the defaults), then what the environment says over it."""
    config = _load_file(path, fields)
    dsn = os.environ.get(CLUSTER_DSN_VAR)
    if dsn:
        config = replace(config, cluster=config.cluster._replace(dsn=dsn))
    return config


def _load_file(path: Path, fields: FieldNames) -> Config:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise MalformedFile(f"cannot read {path}: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
        return _parse(doc, path, fields)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, TypeError,
            RecursionError) as exc:
        raise MalformedFile(f"malformed {path}: {' '.join(str(exc).split())}") from exc


def _parse(doc: Mapping[str, Any], path: Path, fields: FieldNames) -> Config:
    known_keys(doc, {"worker", "tasks", "queues", "spool", "frontend", "provision", "cluster",
                     "notify"}, "config.toml")
    w = table(doc, "worker")
    known_keys(w, set(WorkerSettings._fields), "[worker]")
    worker = WorkerSettings(
        concurrency=_int(w, "concurrency", 2, 1, 256),
        max_attempts=_int(w, "max_attempts", 3, 1, 100),
        backoff_base=_num(w, "backoff_base", 10.0),
        backoff_max=_num(w, "backoff_max", 3600.0),
        timeout=_num(w, "timeout", 3600.0),
        kill_grace=_num(w, "kill_grace", 10.0),
        max_load=_num(w, "max_load", 0.0, "a number (times the CPU count)"),
    )
    sp = table(doc, "spool")
    known_keys(sp, set(SpoolSettings._fields), "[spool]")
    allow_nfs = sp.get("allow_network_filesystem", False)
    if not isinstance(allow_nfs, bool):
        raise ValueError("[spool]: allow_network_filesystem must be true or false")
    tasks = {}
    for name, spec in table(doc, "tasks").items():
        if not TASK_NAME.fullmatch(name):
            raise ValueError(f"[tasks.{name}]: a task name is lower-case letters, digits, '-'")
        if not isinstance(spec, dict):
            raise ValueError(f"[tasks.{name}] must be a table")
        tasks[name] = _command_task(name, spec, fields.secret)
    queues = dict(DEFAULT_QUEUES)
    for name, spec in table(doc, "queues").items():
        if name not in DEFAULT_QUEUES:
            raise ValueError(f"[queues.{name}]: known queues are {', '.join(DEFAULT_QUEUES)}")
        if not isinstance(spec, dict):
            raise ValueError(f"[queues.{name}] must be a table")
        queues[name] = _queue(DEFAULT_QUEUES[name], spec)
    return Config(worker=worker, tasks=tasks, queues=queues,
                  spool=SpoolSettings(allow_network_filesystem=allow_nfs),
                  frontend=_frontend(table(doc, "frontend"), fields.known),
                  provision=_provision(table(doc, "provision")),
                  cluster=_cluster(table(doc, "cluster")),
                  webhooks=_webhooks(table(doc, "notify")),
                  emails=_emails(table(doc, "notify")), path=path)


_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")


def _filters(hook: Mapping[str, Any], where: str) -> tuple[tuple[str, ...], tuple[str, ...],
                                                          float]:
    """A notice's outcomes, types and timeout, checked."""
    outcomes = hook.get("outcomes", ["error"])
    if (not isinstance(outcomes, list) or not outcomes
            or any(o not in OUTCOMES for o in outcomes)):
        raise ValueError(f"{where}: outcomes is a list of {', '.join(OUTCOMES)}")
    types = hook.get("types", [])
    if not isinstance(types, list) or any(not isinstance(t, str) for t in types):
        raise ValueError(f"{where}: types is a list of task type names")
    timeout = hook.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0 < timeout <= 300:
        raise ValueError(f"{where}: timeout is a number of seconds, up to 300")
    return tuple(outcomes), tuple(types), float(timeout)


def _notices(spec: Mapping[str, Any], kind: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Each ``[notify.KIND.NAME]`` table: its name, itself, and where it is (for errors)."""
    for name, notice in table(spec, kind).items():
        where = f"[notify.{kind}.{name}]"
        if not TASK_NAME.fullmatch(name) or not isinstance(notice, dict):
            raise ValueError(f"{where}: a notice is a table named with lower-case letters, "
                             "digits and '-'")
        yield name, notice, where


def _emails(spec: Mapping[str, Any]) -> dict[str, Email]:
    out = {}
    for name, mail, where in _notices(spec, "email"):
        known_keys(mail, {"to", "from", "smtp", "outcomes", "types", "timeout"}, where)
        to = mail.get("to")
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list) or not to or any(
                not isinstance(a, str) or not _ADDRESS.fullmatch(a) for a in to):
            raise ValueError(f"{where}: to is a mail address, or a list of them")
        sender = mail.get("from", "hostctl@localhost")
        if not isinstance(sender, str) or not _ADDRESS.fullmatch(sender):
            raise ValueError(f"{where}: from is a mail address")
        smtp = mail.get("smtp", "localhost:25")
        if not isinstance(smtp, str) or not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}",
                                                          smtp):
            raise ValueError(f"{where}: smtp is HOST:PORT")
        outcomes, types, timeout = _filters({"timeout": 30.0, **mail}, where)
        out[name] = Email(name, tuple(to), sender, smtp, outcomes, types, timeout)
    return out


def _webhooks(spec: Mapping[str, Any]) -> dict[str, Webhook]:
    known_keys(spec, {"webhooks", "email"}, "[notify]")
    out = {}
    for name, hook, where in _notices(spec, "webhooks"):
        known_keys(hook, set(Webhook._fields) - {"name"}, where)
        url = hook.get("url")
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", url):
            raise ValueError(f"{where}: url must be an http:// or https:// address")
        secret_file = hook.get("secret_file", "")
        if not isinstance(secret_file, str) or (secret_file and
                                                not secret_file.startswith("/")):
            raise ValueError(f"{where}: secret_file must be an absolute path")
        outcomes, types, timeout = _filters(hook, where)
        out[name] = Webhook(name, url, secret_file, outcomes, types, timeout)
    return out


def _cluster(spec: Mapping[str, Any]) -> ClusterSettings:
    known_keys(spec, set(ClusterSettings._fields), "[cluster]")
    dsn = spec.get("dsn", "")
    if not isinstance(dsn, str) or "\x00" in dsn:
        raise ValueError("[cluster]: dsn must be a string (a PostgreSQL connection string)")
    server = spec.get("server", "")
    if not isinstance(server, str) or not _SERVER_NAME.fullmatch(server):
        raise ValueError("[cluster]: server must name a server context, as @web1")
    run_tasks = spec.get("run_tasks", True)
    if not isinstance(run_tasks, bool):
        raise ValueError("[cluster]: run_tasks must be true or false")
    return ClusterSettings(dsn, server, run_tasks)


#: a server's name as [cluster] server and --server give it (contexts/names.py checks the
#: rest of the naming rules where the context is looked up)
_SERVER_NAME = re.compile(r"(@[a-z0-9][a-z0-9._-]{0,252})?")


def _provision(spec: Mapping[str, Any]) -> ProvisionSettings:
    known_keys(spec, set(ProvisionSettings._fields), "[provision]")
    require = spec.get("require_disable_before_delete", True)
    if not isinstance(require, bool):
        raise ValueError("[provision]: require_disable_before_delete must be true or false")
    return ProvisionSettings(
        require_disable_before_delete=require,
        backup_keep_days=_num(spec, "backup_keep_days", 0.0, "a number of days"),
        backup_keep=_int(spec, "backup_keep", 0, 0, 1_000_000),
    )


def _frontend(fe: Mapping[str, Any], known: frozenset[str]) -> FrontendSettings:
    known_keys(fe, {"context_options"}, "[frontend]")
    names = fe.get("context_options", list(FRONTEND_CONTEXT_OPTIONS))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("[frontend]: context_options must be a list of field names")
    for name in names:
        if name not in known:
            raise ValueError(f"[frontend]: context_options: unknown field {name!r}")
        if name in ("protected", "locked"):  # the drop box refuses them whatever this says
            raise ValueError(f"[frontend]: context_options: {name!r} guards against "
                             "dangerous tasks; a front end may never change it")
    return FrontendSettings(tuple(names))


def _queue(base: QueueSettings, spec: Mapping[str, Any]) -> QueueSettings:
    where = f"[queues.{base.name}]"
    known_keys(spec, set(QueueSettings._fields) - {"name"}, where)
    qtype = spec.get("type", base.type)
    if qtype not in ("serial", "batch", "spread"):
        raise ValueError(f"{where}: type must be serial, batch or spread")
    enabled = spec.get("enabled", base.enabled)
    if not isinstance(enabled, bool):
        raise ValueError(f"{where}: enabled must be true or false")
    frequency = _num(spec, "frequency", base.frequency)
    if frequency < 1:
        raise ValueError(f"{where}: frequency must be at least 1 second")
    q = QueueSettings(
        name=base.name, type=qtype, frequency=frequency,
        items=_int(spec, "items", base.items, 0, 10000), enabled=enabled,
        threshold=_int(spec, "threshold", base.threshold, 1, 1_000_000),
        min_threads=_int(spec, "min_threads", base.min_threads, 1, 1000),
        max_threads=_int(spec, "max_threads", base.max_threads, 1, 1000),
        retention_days=_num(spec, "retention_days", base.retention_days, "a number of days"),
    )
    if q.min_threads > q.max_threads:
        raise ValueError(f"{where}: min_threads is above max_threads")
    return q


def _command_task(name: str, spec: Mapping[str, Any], secrets: frozenset[str]) -> CommandTask:
    where = f"[tasks.{name}]"
    known_keys(spec, {"command", "context_types", "options", "help", "timeout", "max_attempts",
                  "rerun_on_loss", "env"}, where)
    command = spec.get("command")
    if (not isinstance(command, list) or not command
            or not all(isinstance(c, str) for c in command)):
        raise ValueError(f"{where}: command must be a non-empty list of strings (an argv)")
    types = spec.get("context_types", ["site"])
    if not isinstance(types, list) or not types or not all(
        t in ("server", "platform", "site") for t in types
    ):
        raise ValueError(f"{where}: context_types must list server, platform and/or site")
    options = spec.get("options", {})
    if isinstance(options, list):
        options = {o: "" for o in options}
    if not isinstance(options, dict) or not all(
        isinstance(k, str) and re.fullmatch(r"[a-z][a-z0-9_-]*", k) and isinstance(v, str)
        for k, v in options.items()
    ):
        raise ValueError(f"{where}: options must map option names to help texts")
    for item in command:
        for ref in PLACEHOLDER.findall(item):
            if ref.startswith("option.") and ref[7:] not in options:
                raise ValueError(f"{where}: {{{ref}}} names an undeclared option")
            if ref in secrets:
                raise ValueError(
                    f"{where}: {{{ref}}} is a secret and would show in the process list; "
                    f"read it from $HOSTCTL_FIELD_{ref.upper()} instead")
    env = spec.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ValueError(f"{where}: env must map names to strings")
    timeout = spec.get("timeout")
    if timeout is not None and (not _finite(timeout) or timeout <= 0):
        raise ValueError(f"{where}: timeout must be a positive number of seconds, "
                         f"at most {MAX_NUMBER:g}")
    max_attempts = spec.get("max_attempts")
    if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
        raise ValueError(f"{where}: max_attempts must be a whole number of at least 1")
    rerun = spec.get("rerun_on_loss", True)
    if not isinstance(rerun, bool):
        raise ValueError(f"{where}: rerun_on_loss must be true or false")
    help_text = spec.get("help", "")
    if not isinstance(help_text, str):
        raise ValueError(f"{where}: help must be a string")
    return CommandTask(name, tuple(command), tuple(types), dict(options), help_text,
                       float(timeout) if timeout else None, max_attempts, rerun, dict(env))


def table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``doc[key]`` as a TOML table (missing: empty); ValueError for anything else."""
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{key}] must be a table")
    return value


def known_keys(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """ValueError naming the keys of ``doc`` outside ``allowed`` (a typo in a file)."""
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _int(doc: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{key} must be a whole number from {lo} to {hi}")
    return value


#: the largest number a setting takes (about 31 years in seconds): beyond it, and for nan
#: and inf, arithmetic on times overflows or never compares true
MAX_NUMBER = 1e9


def _finite(value: object) -> bool:
    """A number (not a bool) from 0 to MAX_NUMBER; TOML also gives nan, inf and
    integers too large for a float."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and 0 <= value <= MAX_NUMBER)


def _num(doc: Mapping[str, Any], key: str, default: float,
         what: str = "a number of seconds") -> float:
    value = doc.get(key, default)
    if not _finite(value):
        raise ValueError(f"{key} must be {what}, from 0 to {MAX_NUMBER:g}")
    return float(value)
