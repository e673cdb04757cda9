"""``hostctl setup``: a server's back end in one command, as root (docs/deploy.md).

The steps, in order; each looks first and acts only on what is missing, so a second run
changes nothing, and a dry run only looks:

  user      the system user (``useradd --system``, its own group, no login shell), whose
            home directory is the hostctl home; an existing user must have that home
  home      the folder (its missing parents made root's, 0755), the user's, 0700
  group     the back-end user in the front end's group (``usermod -a -G``): it gives its
            drop box to that group (docs/security.md)
  drop box  ``hostctl frontend setup --group GROUP``
  runner    cron: the user's crontab entry (``hostctl cron install``); systemd:
            ``hostctl-wait-queue.service`` written (checked with ``systemd-analyze
            verify`` where it is installed), then ``systemctl daemon-reload`` and
            ``enable --now`` when systemd runs this machine; supervisor: ``hostctl.conf``
            in Supervisor's conf.d, then ``supervisorctl update`` when supervisord answers
  doctor    ``hostctl doctor``: its findings; any left fails the setup

Whatever hostctl itself does for the back end (the drop box, the crontab entry, the unit
or the section, doctor) runs as the back-end user, as a new hostctl process: the files it
makes are that user's, and it proves that the user can run hostctl at all, as cron,
systemd and Supervisor will. Every command is an argv list; no shell ever reads a name or
a path given here. A step that fails ends the run: the report says what was done before.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from hostctl.errors import Conflict, HostctlError, InvalidInput, NotFound, OperationFailed
from hostctl.files import write_atomic
from hostctl.paths import Paths
from hostctl.queues.layout import HOME_MODE, INCOMING_MODE, OUTBOX_MODE, SPOOL_MODE
from hostctl.runners import crontab, service
from hostctl.runners.home import Home
from hostctl.runners.service import LANG, UNIT

RUNNERS = ("cron", "systemd", "supervisor", "none")
DEFAULT_USER = "hostctl"
DEFAULT_HOME = Path("/var/lib/hostctl")
SYSTEMD_DIR = Path("/etc/systemd/system")
SUPERVISOR_DIR = Path("/etc/supervisor/conf.d")
SUPERVISOR_FILE = "hostctl.conf"
PRIVATE_HOME = 0o700
#: useradd's own rule for a portable name (and never a leading '-': no option injection)
NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
NO_LOGIN = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
TIMEOUT = 300  # seconds for one command


class Outcome(Enum):
    DONE = "done"
    ALREADY = "already so"
    WOULD = "would do"
    BY_HAND = "to do by hand"
    FAILED = "failed"


@dataclass(frozen=True)
class Step:
    name: str
    outcome: Outcome
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"step": self.name, "outcome": self.outcome.value, "detail": self.detail}


@dataclass(frozen=True)
class SetupRequest:
    user: str = DEFAULT_USER
    group: str | None = None  # the front end's group
    home: Path | None = None  # None: the existing user's home, else DEFAULT_HOME
    runner: str | None = None  # None: systemd where it runs the machine, else cron
    config_dir: Path | None = None  # None: SYSTEMD_DIR or SUPERVISOR_DIR
    max_runtime: float = 3600.0
    dry_run: bool = False


@dataclass(frozen=True)
class SetupReport:
    user: str
    home: Path
    runner: str
    steps: tuple[Step, ...]
    doctor: tuple[str, ...]  # doctor's lines, as the back-end user saw them

    @property
    def ok(self) -> bool:
        return all(s.outcome is not Outcome.FAILED for s in self.steps)

    def to_json(self) -> dict[str, object]:
        return {"user": self.user, "home": str(self.home), "runner": self.runner,
                "ok": self.ok, "steps": [s.to_json() for s in self.steps],
                "doctor": list(self.doctor)}


def systemd_runs() -> bool:
    """Whether systemd runs this machine (sd_booted(3)'s test)."""
    return os.path.isdir("/run/systemd/system")


def setup(request: SetupRequest) -> SetupReport:
    """Refuse what cannot be set up (InvalidInput, NotFound, Conflict) before anything
    is changed; then run the steps, stopping at the first that fails."""
    if os.geteuid() != 0:
        raise InvalidInput("hostctl setup makes a user and writes under /etc: run it as "
                           "root (sudo hostctl setup ...)")
    plan = _plan(request)
    return plan.run()


@dataclass
class _Plan:
    request: SetupRequest
    user: str
    home: Path
    runner: str
    config_dir: Path
    gid: int | None  # the front end's group

    def run(self) -> SetupReport:
        steps: list[Step] = []
        doctor: tuple[str, ...] = ()
        for name, action in (("user", self._user), ("home", self._home),
                             ("group", self._group), ("drop box", self._dropbox),
                             ("runner", self._runner), ("doctor", self._doctor)):
            try:
                got = action()
            except HostctlError as exc:
                got = Step(name, Outcome.FAILED, exc.message)
            if isinstance(got, tuple):
                got, doctor = got
            if got is None:
                continue
            steps.append(got)
            if got.outcome is Outcome.FAILED:
                break
        return SetupReport(self.user, self.home, self.runner, tuple(steps), doctor)

    @property
    def dry(self) -> bool:
        return self.request.dry_run

    def _account(self) -> pwd.struct_passwd | None:
        try:
            return pwd.getpwnam(self.user)
        except KeyError:
            return None

    # -- the steps ----------------------------------------------------------------------

    def _user(self) -> Step:
        if self._account() is not None:
            return Step("user", Outcome.ALREADY, f"user {self.user} (home {self.home})")
        if self.dry:
            return Step("user", Outcome.WOULD, f"make the system user {self.user}, home "
                                               f"{self.home}, no login shell")
        shell = next((s for s in NO_LOGIN if os.path.exists(s)), NO_LOGIN[-1])
        try:
            grp.getgrnam(self.user)
            own_group = ["--gid", self.user]  # a group of that name is there already
        except KeyError:
            own_group = ["--user-group"]
        _run(["useradd", "--system", *own_group, "--home-dir", str(self.home),
              "--no-create-home", "--shell", shell, "--comment", "hostctl back end",
              "--", self.user], f"useradd {self.user}")
        return Step("user", Outcome.DONE, f"made the system user {self.user}, home "
                                          f"{self.home}, shell {shell}")

    def _home(self) -> Step:
        account = self._account()
        try:
            st = os.lstat(self.home)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise Conflict(f"{self.home} is there and is not a folder")
        if st is not None and account is not None and st.st_uid == account.pw_uid:
            mode = stat.S_IMODE(st.st_mode)
            if mode in (PRIVATE_HOME, HOME_MODE):
                return Step("home", Outcome.ALREADY, f"{self.home}, {self.user}'s, {mode:04o}")
            if self.dry:
                return Step("home", Outcome.WOULD, f"make {self.home} mode 0700")
            _own(self.home, None, PRIVATE_HOME)
            return Step("home", Outcome.DONE, f"{self.home}: mode {mode:04o} -> 0700")
        if st is not None and any(os.scandir(self.home)):
            raise Conflict(f"{self.home} holds files of uid {st.st_uid}, not {self.user}'s: "
                           "hostctl will not take a folder in use over; choose another "
                           "--home")
        if self.dry or account is None:
            return Step("home", Outcome.WOULD, f"make {self.home}, {self.user}'s, 0700")
        self.home.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if st is None:
            os.mkdir(self.home, PRIVATE_HOME)
        _own(self.home, account, PRIVATE_HOME)
        return Step("home", Outcome.DONE, f"made {self.home}, {self.user}'s, 0700")

    def _group(self) -> Step | None:
        group = self.request.group
        if group is None or self.gid is None:
            return None
        account = self._account()
        if account is not None and self.gid in os.getgrouplist(self.user, account.pw_gid):
            return Step("group", Outcome.ALREADY, f"{self.user} is in group {group}")
        if self.dry or account is None:
            return Step("group", Outcome.WOULD, f"put {self.user} in group {group}")
        _run(["usermod", "--append", "--groups", group, "--", self.user],
             f"usermod {self.user}")
        return Step("group", Outcome.DONE, f"put {self.user} in group {group}")

    def _dropbox(self) -> Step | None:
        group = self.request.group
        if group is None or self.gid is None:
            return None
        paths = Paths(self.home)
        wanted = [(paths.home, HOME_MODE), (paths.spool, SPOOL_MODE),
                  (paths.spool / "incoming", INCOMING_MODE),
                  (paths.spool / "outbox", OUTBOX_MODE)]
        if all(_has(path, mode, self.gid) for path, mode in wanted):
            return Step("drop box", Outcome.ALREADY, f"group {group} may submit tasks")
        if self.dry or self._account() is None:
            return Step("drop box", Outcome.WOULD, f"hostctl frontend setup --group {group}")
        self._hostctl("frontend", "setup", "--group", group)
        return Step("drop box", Outcome.DONE, f"group {group} may submit tasks "
                                              "(hostctl frontend setup)")

    def _runner(self) -> Step | None:
        if self.runner == "cron":
            return self._cron()
        if self.runner in ("systemd", "supervisor"):
            return self._service()
        return None

    def _cron(self) -> Step:
        wanted = crontab.block(Paths(self.home))
        current = None
        if self._account() is not None:
            listed = _run_quiet(["crontab", "-u", self.user, "-l"])
            current = crontab.split(listed)[1] if listed is not None else None
        if current == wanted:
            return Step("runner", Outcome.ALREADY, f"{self.user}'s crontab runs dispatch "
                                                   "every minute")
        if self.dry or self._account() is None:
            return Step("runner", Outcome.WOULD, f"hostctl cron install, as {self.user}")
        self._hostctl("cron", "install")
        return Step("runner", Outcome.DONE, f"{self.user}'s crontab runs dispatch every "
                                            "minute (hostctl cron install)")

    def _service(self) -> Step:
        systemd = self.runner == "systemd"
        path = self.config_dir / (UNIT if systemd else SUPERVISOR_FILE)
        if self.dry or self._account() is None:
            return Step("runner", Outcome.WOULD, f"write {path}")
        # rendered here, as root, from the home read only: never the output of a process
        # of the back-end user, whose Python loads what that user may put in its home
        text = service.render(Home(Paths(self.home)), self.runner, self.user,
                              self.request.max_runtime)
        try:
            changed = path.read_text(encoding="utf-8") != text
        except FileNotFoundError:
            changed = True
        except (OSError, UnicodeDecodeError) as exc:
            raise OperationFailed(f"cannot read {path}: {exc}") from None
        if changed:
            if systemd:
                _verify_unit(text)
            self.config_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomic(path, text.encode("utf-8"), mode=0o644)
        written = f"wrote {path}" if changed else f"{path} is as it should be"
        then = self._start_systemd(changed) if systemd else self._update_supervisor()
        if then is None:
            return Step("runner", Outcome.DONE if changed else Outcome.ALREADY, written)
        outcome, said = then
        if outcome is Outcome.BY_HAND:
            return Step("runner", Outcome.BY_HAND, f"{written}; {said}")
        return Step("runner", Outcome.DONE if changed or said else Outcome.ALREADY,
                    f"{written}; {said}" if said else written)

    def _start_systemd(self, changed: bool) -> tuple[Outcome, str] | None:
        todo = f"systemctl daemon-reload && systemctl enable --now {UNIT}"
        if not systemd_runs():
            return Outcome.BY_HAND, f"systemd does not run this machine: run `{todo}` " \
                                    "where it does"
        if self.config_dir != SYSTEMD_DIR:
            return Outcome.BY_HAND, f"not systemd's folder: link it into {SYSTEMD_DIR}, " \
                                    f"then `{todo}`"
        if not changed and all(
                _run_quiet(["systemctl", "--quiet", check, UNIT]) is not None
                for check in ("is-enabled", "is-active")):
            return None  # enabled and running already
        _run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
        _run(["systemctl", "enable", UNIT], f"systemctl enable {UNIT}")
        _run(["systemctl", "restart" if changed else "start", UNIT], f"systemctl start {UNIT}")
        return Outcome.DONE, f"enabled and {'restarted' if changed else 'started'} {UNIT}"

    def _update_supervisor(self) -> tuple[Outcome, str] | None:
        ctl = shutil.which("supervisorctl")
        if ctl is None:
            return Outcome.BY_HAND, "supervisorctl is not installed: install Supervisor, " \
                                    "then `supervisorctl update`"
        ran = subprocess.run([ctl, "update"], capture_output=True, text=True,
                             timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        said = " ".join((ran.stdout + ran.stderr).split())
        if ran.returncode != 0:
            return Outcome.BY_HAND, ("supervisord does not answer (" + said[:200] + "): "
                                     "start it, then `supervisorctl update`")
        return Outcome.DONE, f"supervisorctl update: {said}" if said else ""

    def _doctor(self) -> tuple[Step, tuple[str, ...]]:
        if self.dry or self._account() is None:
            return Step("doctor", Outcome.WOULD, f"hostctl doctor, as {self.user}"), ()
        ran = self._hostctl_run("doctor")
        lines = tuple(line for line in ran.stdout.splitlines() if line.strip())
        if ran.returncode == 0:
            return Step("doctor", Outcome.DONE, f"hostctl doctor, as {self.user}: "
                                                "no problem"), lines
        why = ran.stderr.strip().splitlines()
        return Step("doctor", Outcome.FAILED, why[-1] if why else
                    f"hostctl doctor exited {ran.returncode}"), lines

    # -- hostctl as the back-end user -------------------------------------------------

    def _hostctl_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        account = self._account()
        assert account is not None
        argv = [*crontab.hostctl_argv(), "--home", str(self.home), *args]
        env = {"HOME": account.pw_dir, "USER": self.user, "LOGNAME": self.user,
               "PATH": crontab.search_path(argv[0]), "LANG": LANG,
               "HOSTCTL_HOME": str(self.home)}
        try:
            return subprocess.run(
                argv, user=account.pw_uid, group=account.pw_gid,
                extra_groups=os.getgrouplist(self.user, account.pw_gid), env=env, cwd="/",
                capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise OperationFailed(
                f"{self.user} cannot run {argv[0]} ({exc.strerror}): install hostctl where "
                "every user may read and run it (docs/deploy.md)") from None
        except subprocess.TimeoutExpired:
            raise OperationFailed(f"hostctl {' '.join(args)} as {self.user} did not end "
                                  f"within {TIMEOUT} s") from None

    def _hostctl(self, *args: str) -> str:
        ran = self._hostctl_run(*args)
        if ran.returncode != 0:
            why = ran.stderr.strip().splitlines()
            raise OperationFailed(f"hostctl {args[0]} {args[1] if len(args) > 1 else ''}"
                                  .rstrip() + f" as {self.user} failed: "
                                  + (why[-1] if why else f"exit {ran.returncode}"))
        return ran.stdout


def _plan(request: SetupRequest) -> _Plan:
    user = request.user
    if not NAME.fullmatch(user):
        raise InvalidInput(f"--user {user!r}: a user name is lower-case letters, digits, "
                           "'_' and '-', at most 32, not starting with a digit or '-'")
    if request.runner is not None and request.runner not in RUNNERS:
        raise InvalidInput(f"--runner {request.runner!r}: one of {', '.join(RUNNERS)}")
    runner = request.runner or ("systemd" if systemd_runs() else "cron")
    try:
        account: pwd.struct_passwd | None = pwd.getpwnam(user)
    except KeyError:
        account = None
    if account is not None and account.pw_uid == 0:
        raise InvalidInput(f"--user {user}: the back end must not be root (its tasks run "
                           "what sites and platforms bring); choose another user")
    home = request.home or (Path(account.pw_dir) if account is not None else DEFAULT_HOME)
    crontab.line_safe("the home", str(home))
    if not home.is_absolute() or os.path.normpath(home) != str(home) or ":" in str(home):
        raise InvalidInput(f"--home {str(home)!r}: an absolute path, without '..', '//' or "
                           "':' (the password file's separator)")
    if account is not None and os.path.normpath(account.pw_dir) != str(home):
        raise Conflict(f"user {user} exists with the home directory {account.pw_dir}, not "
                       f"{home}: pass --home {account.pw_dir}, or choose another --user")
    gid = None
    if request.group is not None:
        try:
            gid = grp.getgrnam(request.group).gr_gid
        except KeyError:
            raise NotFound(f"no group {request.group!r}: make it and put the web server's "
                           f"user in it first (groupadd; usermod -a -G)") from None
    config_dir = request.config_dir or (SYSTEMD_DIR if runner == "systemd" else SUPERVISOR_DIR)
    return _Plan(request, user, home, runner, config_dir, gid)


def _own(folder: Path, account: pwd.struct_passwd | None, mode: int) -> None:
    """Give ``folder`` to ``account`` (None: leave its owner) with ``mode``, through a
    descriptor of the folder itself: a name swapped for a symbolic link since it was
    looked at is refused, never followed (root must not chown what a link points to)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise Conflict(f"{folder} is no longer a folder ({exc.strerror}): run setup "
                       "again") from None
    try:
        if account is not None:
            os.fchown(fd, account.pw_uid, account.pw_gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _has(path: Path, mode: int, gid: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_IMODE(st.st_mode) == mode and st.st_gid == gid


def _run(argv: list[str], what: str) -> None:
    try:
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise OperationFailed(f"{what}: {exc.strerror}") from None
    if ran.returncode != 0:
        raise OperationFailed(f"{what} failed: {' '.join(ran.stderr.split())}")


def _run_quiet(argv: list[str]) -> str | None:
    """``argv``'s output, or None when it fails (or is not installed)."""
    try:
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except OSError:
        return None
    return ran.stdout if ran.returncode == 0 else None


def _verify_unit(text: str) -> None:
    """``systemd-analyze verify`` on the unit, where it is installed: a unit systemd
    would refuse is never written."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    with tempfile.TemporaryDirectory(prefix="hostctl-unit-") as folder:
        unit = Path(folder) / UNIT
        unit.write_text(text, encoding="utf-8")
        ran = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                             text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if ran.returncode != 0:
        raise OperationFailed("systemd-analyze verify refuses the unit: "
                              + " ".join(ran.stderr.split()))
