"""``hostctl upgrade-home``: bring a home an older hostctl wrote up to this one's format.

The home's format is in ``HOME/hostctl-home.toml`` (``formats.py``; a home with content and
no marker is format 1). :data:`STEPS` lists the migrations in order, each from one format
to the next; an upgrade runs those from the home's format to :data:`~hostctl.formats.
HOME_FORMAT` and reports each.

Each step is atomic and idempotent. A step does its work first, every change itself atomic
(a file written to a temporary name and renamed) and a no-op once done; then the driver
writes the marker of the step's target format, atomically. A step cut short (a crash, a
power cut, an error) leaves the home in the step's source format with part of the work
done; the next ``upgrade-home`` runs that step again, which finishes it. A home is
therefore always in exactly one format, the one its marker says.

The upgrade runs with no runner beside it: it holds the leader's lock
(``spool/locks/dispatch.lock``, the outermost lock: a ``dispatch`` or a daemon's
housekeeping cannot run meanwhile) and refuses, naming what runs, while a ``wait-queue``
is alive on the home or a task runs (its file's lock held). Stop them first
(docs/upgrade.md). ``dry_run`` takes no lock and writes nothing: it says what would be
done, and what would be refused. A real upgrade makes a dry run first, so that a record a
newer hostctl wrote refuses it before anything is written, a lock file included.

A home of a newer format than this hostctl knows is refused (NewerFormat), as every other
command refuses it; nothing is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostctl import __version__
from hostctl.errors import Conflict, MalformedFile
from hostctl.files import lock_held
from hostctl.formats import (
    HOME_FORMAT,
    HOME_MARKER,
    home_format,
    marker_path,
    refuse_newer,
    write_marker,
)
from hostctl.queues.tally import VERSION as TALLY_VERSION
from hostctl.runners.home import Home
from hostctl.runners.periodic import QueueState


@dataclass(frozen=True)
class Step:
    """One migration: from ``from_format`` to the next; ``run(home, dry_run)`` does (or,
    in a dry run, only says) its work, and returns one line per thing it did."""

    from_format: int
    title: str
    run: Callable[[Home, bool], list[str]]

    @property
    def to_format(self) -> int:
        return self.from_format + 1


@dataclass(frozen=True)
class StepReport:
    from_format: int
    to_format: int
    title: str
    lines: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_format, "to": self.to_format, "title": self.title,
                "did": list(self.lines)}


@dataclass(frozen=True)
class UpgradeReport:
    """What an upgrade found and did (in a dry run: would do)."""

    home: str
    found: int
    target: int
    dry_run: bool
    steps: tuple[StepReport, ...] = field(default=())

    @property
    def current(self) -> bool:
        """The home was of this hostctl's format already: nothing to do."""
        return self.found == self.target

    def to_json(self) -> dict[str, Any]:
        return {"home": self.home, "format_found": self.found, "format": self.target,
                "hostctl": __version__, "current": self.current, "dry_run": self.dry_run,
                "steps": [s.to_json() for s in self.steps]}


# -- the steps ----------------------------------------------------------------------------


def check_records(home: Home, dry_run: bool) -> list[str]:
    """1 -> 2: hostctl 0.1.0's records are format 2's records. Read every one (contexts,
    the sites' secrets records, tasks, the tally, the periodic queues' record): one a
    newer hostctl wrote stops the upgrade (NewerFormat), with nothing written. A record
    that cannot be read was unreadable before the upgrade too: it is named, and left for
    its owner (``provision-save``, the sweep's quarantine). Backups are archives that are
    never rewritten; each is checked when it is restored. Writes nothing."""
    store, unreadable = home.store, []
    contexts = sites = 0
    for name in store.names():
        try:
            ctx = store.get(name)
        except MalformedFile as exc:
            unreadable.append(exc.message)
            continue
        contexts += 1
        if ctx.type != "site":
            continue
        try:
            if home.secrets.read(ctx.name) is not None:
                sites += 1
        except MalformedFile as exc:
            unreadable.append(exc.message)
    tasks = len(home.queue.tasks(strict=True))
    _check_tallies(home.paths.spool / "tally")
    QueueState(home.queue)
    lines = [f"read {contexts} context(s), {sites} secrets record(s), {tasks} task(s), "
             "the tally and the periodic queues' record: none is newer than hostctl "
             f"{__version__} reads"]
    lines += [f"unreadable, as before the upgrade (left as it is): {u}" for u in unreadable]
    return lines


def _check_tallies(folder: Path) -> None:
    """Each tally file's version, read only (the tally's own reader takes a lock that it
    may have to make, and a dry run makes nothing)."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except OSError:
        return
    for name in names:
        try:
            doc = json.loads((folder / name).read_bytes())
        except (OSError, ValueError):
            continue  # damaged counts are passed over by their reader too
        if isinstance(doc, dict):
            refuse_newer(doc.get("version"), TALLY_VERSION, folder / name)


#: every migration, in order; the next format change adds one step here
STEPS: tuple[Step, ...] = (
    Step(1, "check that every record reads, then mark the home", check_records),
)


# -- the driver ---------------------------------------------------------------------------


def upgrade(home: Home, dry_run: bool = False, steps: Sequence[Step] = STEPS,
            target: int = HOME_FORMAT) -> UpgradeReport:
    """Run the steps from the home's format to ``target`` (see the module docstring)."""
    root = home.paths.home
    found = home_format(root)
    refuse_newer(found, target, marker_path(root))
    if found == target:
        return UpgradeReport(str(root), found, target, dry_run)
    todo = _steps_from(found, target, steps)
    if not dry_run:
        home.paths.ensure_home()  # owner check; an older home keeps its marker as it is
    refused = _runners(home)
    if refused:
        raise Conflict(f"cannot upgrade {root} while {refused} runs on it: stop it first "
                       "(docs/upgrade.md), then run upgrade-home again")
    if not dry_run:
        # every step's reading first, writing nothing (not even a lock file): a record
        # of a newer format refuses the upgrade before anything of the home changes
        upgrade(home, dry_run=True, steps=steps, target=target)
    reports = []
    with _leader(home, dry_run):
        leftovers = _marker_leftovers(root)
        if leftovers:
            for path in leftovers if not dry_run else ():
                path.unlink(missing_ok=True)
            reports.append(StepReport(found, found, "tidy up", (
                f"{'would remove' if dry_run else 'removed'} {len(leftovers)} temporary "
                f"file(s) of an earlier upgrade cut short",)))
        for step in todo:
            lines = step.run(home, dry_run)
            if dry_run:
                lines.append(f"would write {marker_path(root)} (format {step.to_format})")
            else:
                write_marker(root, step.to_format)
                lines.append(f"wrote {marker_path(root)} (format {step.to_format})")
            reports.append(StepReport(step.from_format, step.to_format, step.title,
                                      tuple(lines)))
    return UpgradeReport(str(root), found, target, dry_run, tuple(reports))


def _steps_from(found: int, target: int, steps: Sequence[Step]) -> list[Step]:
    by_format = {s.from_format: s for s in steps}
    todo = []
    for fmt in range(found, target):
        if fmt not in by_format:
            raise Conflict(f"hostctl {__version__} cannot upgrade a home of format {found}: "
                           f"no step from format {fmt}; upgrade it with an older hostctl "
                           "first (docs/upgrade.md)")
        todo.append(by_format[fmt])
    return todo


def _runners(home: Home) -> str:
    """What runs on the home now, in words ("" if nothing): a live wait-queue, a running
    task, a dispatch (holding the leader's lock). Reads only."""
    spool = home.paths.spool
    daemons = []
    try:
        names = sorted(os.listdir(spool / "workers"))
    except OSError:
        names = []
    for name in names:
        pid = name.removesuffix(".json")
        if name.endswith(".json") and pid.isdigit() and \
                lock_held(spool / "locks" / f"worker.{pid}.lock"):
            daemons.append(pid)
    if daemons:
        return f"wait-queue (pid {', '.join(daemons)})"
    try:
        running = home.queue.running()
    except OSError:
        running = []
    if running:
        return f"task {', '.join(sorted(running))}"
    if lock_held(spool / "locks" / "dispatch.lock"):
        return "a dispatch"
    return ""


@contextmanager
def _leader(home: Home, dry_run: bool) -> Iterator[None]:
    """The leader's lock for the upgrade (none for a dry run)."""
    with (nullcontext(True) if dry_run else home.queue.leader()) as mine:
        if not mine:
            raise Conflict(f"cannot upgrade {home.paths.home} while a dispatch runs on it: "
                           "stop it first (docs/upgrade.md), then run upgrade-home again")
        yield


def _marker_leftovers(root: Path) -> list[Path]:
    """Temporary files of a marker's write cut short (write_atomic's names)."""
    try:
        return sorted(root / n for n in os.listdir(root)
                      if n.startswith(f".{HOME_MARKER}.") and n.endswith(".tmp"))
    except OSError:
        return []


def report_lines(report: UpgradeReport) -> list[str]:
    """The report in words, one line each (the command line prints them)."""
    if report.current:
        return [f"{report.home} is format {report.target}, the format of hostctl "
                f"{__version__}: nothing to upgrade"]
    verb = "would upgrade" if report.dry_run else "upgrading"
    out = [f"{verb} {report.home} from format {report.found} to {report.target}"]
    for s in report.steps:
        head = "tidy up" if s.from_format == s.to_format else \
            f"step {s.from_format} -> {s.to_format}: {s.title}"
        out.append(head)
        out += [f"  {line}" for line in s.lines]
    out.append("dry run: nothing was written" if report.dry_run else
               f"{report.home} is format {report.target}")
    return out

