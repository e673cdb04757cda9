"""``hostctl cluster init|status``: the cluster's database (runners/cluster.py).

The database's code (psycopg, procrastinate) is loaded by these commands alone: every
other command of a home that stands alone never pays for it.
"""

from __future__ import annotations

import typer

from hostctl.cli.common import JsonFlag, say, state, table
from hostctl.cli.output import emit_json
from hostctl.contexts.store import TomlStore
from hostctl.errors import ExitStatus, InvalidInput
from hostctl.provision.secrets import FileSecrets
from hostctl.provision.secretstores import plan_take
from hostctl.runners.home import Home

app = typer.Typer(help="The cluster: many servers on one PostgreSQL database.",
                  no_args_is_help=True)


def _dsn(ctx: typer.Context, home: Home | None = None) -> str:
    dsn = (home or Home(state(ctx).paths)).config.cluster.dsn
    if not dsn:
        raise InvalidInput("this home is not in a cluster: set [cluster] dsn in "
                           "config.toml (or HOSTCTL_CLUSTER_DSN); see docs/cluster.md")
    return dsn


@app.command("init")
def init(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Create the cluster's schema in its database, or upgrade it (run it again after
    upgrading hostctl); safe to run from several hosts at once."""
    from hostctl.runners import cluster  # the database's code: for these commands alone

    report = cluster.init(_dsn(ctx))
    if json_:
        emit_json(report.to_json())
        return
    st = state(ctx)
    for step in report.applied:
        say(st, f"applied {step}")
    versions = ", ".join(f"{k} {v}" for k, v in report.after.items())
    say(st, f"{report.database}: {'schema now' if report.changed else 'schema up to date'}: "
            f"{versions}")


def _take(ctx: typer.Context, into_cluster: bool, json_: bool) -> None:
    """Copy the contexts (all or nothing, into the database), then the sites' records:
    every record is checked against the other side before anything is written."""
    home = Home(state(ctx).paths)
    _dsn(ctx, home)  # a home that is not in a cluster has nothing to copy to or from
    files, file_records = TomlStore(home.paths), FileSecrets(home.paths)
    source, target = (files, home.store) if into_cluster else (home.store, files)
    from_records, to_records = (file_records, home.secrets) if into_cluster else \
        (home.secrets, file_records)
    contexts = source.of_type()
    write, same = plan_take(from_records, to_records,
                            [c.name for c in contexts if c.type == "site"])
    report = target.take(contexts)
    for record in write:
        to_records.write(record)
    tasks = None
    if into_cluster:
        from hostctl.queues.pgqueue import PgQueue
        from hostctl.queues.spool import Spool
        from hostctl.runners import cluster

        queue = home.queue
        assert isinstance(queue, PgQueue)
        tasks = cluster.move_tasks(Spool(home.paths.spool, home.paths.logs), queue)
    if json_:
        emit_json({**report.to_json(), "records": {
            "taken": [r.site for r in write], "already": [f"@{s}" for s in same]},
            **({"tasks": tasks.to_json()} if tasks is not None else {})})
        return
    where = "the cluster" if into_cluster else f"{home.paths.home}"
    say(state(ctx), f"{len(report.taken)} context(s) and {len(write)} site record(s) copied "
                    f"into {where}; {len(report.already)} context(s) and {len(same)} "
                    "record(s) already there")
    if tasks is not None:
        say(state(ctx), f"{len(tasks.moved)} queued task(s) moved into the cluster's queue"
                        + (f"; {tasks.left} left in this home's spool (running here, or "
                           "being taken): run the import again once they are done"
                           if tasks.left else ""))


@app.command("import")
def import_(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Copy this home's contexts and sites' records (its files) into the cluster's
    database, and move its queued tasks into the cluster's queue; contexts and records
    already there, identical, are left alone, a different one stops it."""
    _take(ctx, into_cluster=True, json_=json_)


@app.command("export")
def export(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Copy the cluster's contexts and sites' records into this home's files (to leave
    the cluster: then remove [cluster] dsn); those already there, identical, are left
    alone."""
    _take(ctx, into_cluster=False, json_=json_)


@app.command("status")
def status(ctx: typer.Context, json_: JsonFlag = False) -> int:
    """The database, its schema, the jobs per queue and the workers' heartbeats; exits 1
    while the schema is missing or older than this hostctl's."""
    from hostctl.runners import cluster

    found = cluster.status(_dsn(ctx))
    code = ExitStatus.OK if found.ready else ExitStatus.ERROR
    if json_:
        emit_json(found.to_json())
        return code
    typer.echo(f"database: {found.database} (PostgreSQL {found.server_version})")
    schema = ", ".join(f"{k} {v}" for k, v in sorted(found.schema.items())) or "none"
    typer.echo(f"schema: {schema}" + ("" if found.ready else
                                      " (run `hostctl cluster init`)"))
    rows = [(queue, state_, str(n)) for queue, counts in found.jobs.items()
            for state_, n in counts.items()]
    typer.echo(table(rows, ("QUEUE", "STATUS", "JOBS")) if rows else "jobs: none")
    typer.echo(table([(str(w.id), w.host or "-", str(w.pid or "-"), w.server or "-",
                       "yes" if w.alive else "no", f"{w.heartbeat_age:.1f}")
                      for w in found.workers],
                     ("WORKER", "HOST", "PID", "SERVER", "ALIVE", "HEARTBEAT (s ago)"))
               if found.workers else "workers: none")
    for name, srv in found.servers.items():
        who = (f"{srv.workers} live worker{'s' if srv.workers != 1 else ''}"
               if srv.workers else "no live worker")
        typer.echo(f"{name}: {who}, {srv.waiting} task{'s' if srv.waiting != 1 else ''} "
                   f"waiting, {srv.running} running")
    if found.handoff:
        typer.echo(f"handoff to idle workers: {found.handoff['offers']} offering"
                   if found.handoff["on"] else
                   f"handoff to idle workers: off: {found.handoff['why_not']}")
    return code
