"""The privileged helper: the few things only root may do for PHP sites, and nothing else.

hostctl runs as its back-end user. A PHP site's code runs as a UNIX user of its own (so
that one site's PHP can read neither another site's files nor its database password),
and making that user, handing it the folders it may write and its settings file, and
giving it a PHP-FPM pool need root. As Aegir gave its user one sudoers line for the web
server's reload, hostctl gives its back-end user one line for this helper::

    aegir ALL=(root) NOPASSWD: /usr/bin/python3 -I -m hostctl privileged \
        /etc/hostctl/privileged.toml *

(``hostctl privileged --sudoers SETTINGS USER`` prints it for this machine; ``doctor``
checks it.) The helper takes a fixed set of actions, each with strictly checked
arguments; it never runs a command line built from what it is given, and it acts only on
what its settings file, which only root may write, allows:

    backend_user = "aegir"            # whose files it hands over and takes back
    user_prefix = "hs-"               # every site user's name starts with it
    web_user = "www-data"             # joins each site user's group: nginx reads the site
    site_roots = ["/var/aegir/platforms"]      # site folders lie inside one of these
    fpm_pool_dir = "/etc/php/8.2/fpm/pool.d"   # pools: hostctl-USER.conf, root's, 0600
    fpm_socket_dir = "/run/hostctl-fpm"        # sockets: USER.sock, for the web user only
    fpm_test = ["/usr/sbin/php-fpm8.2", "-t"]  # must accept the configuration first
    fpm_reload = ["/usr/bin/systemctl", "reload", "php8.2-fpm"]
    # or, instead of fpm_reload: fpm_pid_file = "/run/php/php8.2-fpm.pid" (SIGUSR2)

The settings file is trusted only if it and every folder above it belong to root and no
one else may write them (a sticky folder such as /tmp excepted, as for its entries only
their owner may rename them). The actions:

``user-add USER``
    a system user and its own group, no login shell, no home; the web user joins the
    group. Only names of ``user_prefix``; an existing user is taken only if the helper
    made it (its comment says so).
``user-del USER``
    the user and its group, once no pool runs as it.
``share USER DIR``
    a site folder (in a site root, the back end's, no symbolic link on the way) gets the
    site's group and mode 0750: the site's PHP and the web server may enter it, no other
    site's PHP may.
``give USER DIR``
    a folder inside a shared site folder (its group is the site's) and all it holds,
    entry by entry, to the site's user: the folders its PHP may write.
``take USER DIR``
    back to the back end: every entry under a site folder that the site's user or group
    owns (before the back end moves or removes it).
``settings USER FILE``
    writes what it reads on stdin (at most 1 MiB) to FILE in a shared site folder, as a
    file of the site's user, mode 0400: readable by that user alone.
``pool-write USER``
    the site's PHP-FPM pool: the helper writes the pool's identity (user, group, listen
    socket and who may connect to it) and takes only known directives from stdin
    (``pm``, ``pm.*``, ``env[...]``, ``php_value[...]``, ``php_admin_value[...]``, flags,
    timeouts); php-fpm must accept the result, then it is reloaded and the helper waits
    for the socket. A refused pool leaves the folder as it was.
``pool-remove USER``
    removes the pool and reloads php-fpm.
``batch``
    several of the above in one run (one sudo, one interpreter start), read as a JSON
    list on stdin, each checked and carried out as alone, stopping at the first that
    fails; it prints one JSON document: what each did, and the failure if one did.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import secrets
import signal
import stat
import subprocess
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from hostctl.errors import (
    Conflict,
    HostctlError,
    InvalidInput,
    MalformedFile,
    OperationFailed,
)
from hostctl.files import flocked, write_all, write_atomic

COMMENT = "hostctl site user"
DEFAULT_SETTINGS = "/etc/hostctl/privileged.toml"
SETTINGS_MAX = 1 << 20
SOCKET_WAIT = 10.0
PING_PATH = "/.hostctl-fpm-ping"
ACTIONS = ("user-add", "user-del", "share", "give", "take", "settings", "pool-write",
           "pool-remove")
_NAME = re.compile(r"[a-z][a-z0-9-]*")
_SITE_USER_TAIL = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")
#: the pool directives the back end may give (their values checked below)
_POOL_KEYS = re.compile(
    r"pm|pm\.(max_children|start_servers|min_spare_servers|max_spare_servers|"
    r"max_spawn_rate|process_idle_timeout|max_requests|status_path)|"
    r"request_terminate_timeout|catch_workers_output|decorate_workers_output|clear_env|"
    r"security\.limit_extensions|rlimit_files|"
    r"(env|php_value|php_flag|php_admin_value|php_admin_flag)\[[A-Za-z0-9_.]{1,64}\]")
#: a pool value: a bare word, or a double-quoted string free of what php-fpm's ini
#: reader would take for syntax or a variable
_POOL_VALUE = re.compile(r'[A-Za-z0-9_./:+,@%-]*|"[^"\\$\x00-\x1f\x7f]*"')
_TOOLS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True)
class Settings:
    path: Path
    backend_user: str
    user_prefix: str
    web_user: str
    site_roots: tuple[Path, ...]
    fpm_pool_dir: Path | None
    fpm_socket_dir: Path | None
    fpm_test: tuple[str, ...]
    fpm_reload: tuple[str, ...]
    fpm_pid_file: Path | None

    @property
    def backend_ids(self) -> tuple[int, int]:
        entry = _user(self.backend_user)
        return entry.pw_uid, entry.pw_gid

    def socket(self, user: str) -> Path:
        if self.fpm_socket_dir is None:
            raise InvalidInput(f"{self.path}: fpm_socket_dir is not set: no PHP-FPM pools")
        return self.fpm_socket_dir / f"{user}.sock"

    def pool_file(self, user: str) -> Path:
        if self.fpm_pool_dir is None:
            raise InvalidInput(f"{self.path}: fpm_pool_dir is not set: no PHP-FPM pools")
        return self.fpm_pool_dir / f"hostctl-{user}.conf"

    def check_user(self, name: str) -> str:
        """A site user's name: the prefix, then 1-24 of a-z, 0-9 and '-'; at most 32."""
        tail = name[len(self.user_prefix):] if name.startswith(self.user_prefix) else ""
        if not _SITE_USER_TAIL.fullmatch(tail) or len(name) > 32:
            raise InvalidInput(f"{name!r} is not a site user's name (it must be "
                               f"{self.user_prefix} and 1-24 of a-z, 0-9, '-')")
        return name


def load(path: str | Path, *, trusted: bool = True) -> Settings:
    """The helper's settings. ``trusted``: refuse a file that anyone but root could have
    written (the helper runs as root); the back end reads it without that check, to
    learn the prefix and the folders."""
    path = Path(path)
    if not path.is_absolute():
        raise InvalidInput(f"the helper's settings file {path} is not an absolute path")
    if trusted:
        check_root_only(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MalformedFile(f"{path} is missing (the privileged helper's settings)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MalformedFile(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    known = {"backend_user", "user_prefix", "web_user", "site_roots", "fpm_pool_dir",
             "fpm_socket_dir", "fpm_test", "fpm_reload", "fpm_pid_file"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise MalformedFile(f"{path}: unknown setting(s) {', '.join(unknown)}")

    def word(key: str, default: str | None = None) -> str:
        value = doc.get(key, default)
        if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > 32:
            raise MalformedFile(f"{path}: {key} must be a UNIX name")
        return value

    def folder(key: str) -> Path | None:
        value = doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
            raise MalformedFile(f"{path}: {key} must be an absolute path without '..'")
        return Path(os.path.normpath(value))

    def argv(key: str) -> tuple[str, ...]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value) \
                or (value and not value[0].startswith("/")):
            raise MalformedFile(f"{path}: {key} must be a list of words, the first an "
                                "absolute path")
        return tuple(value)

    prefix = doc.get("user_prefix", "hs-")
    if not isinstance(prefix, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,7}", prefix):
        raise MalformedFile(f"{path}: user_prefix must be 1-8 of a-z, 0-9, '-' (a letter "
                            "first)")
    roots = doc.get("site_roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise MalformedFile(f"{path}: site_roots must be a list of folders")
    site_roots = []
    for raw in roots:
        if not raw.startswith("/") or ".." in raw.split("/") or os.path.normpath(raw) == "/":
            raise MalformedFile(f"{path}: site root {raw!r} must be an absolute folder "
                                "other than /, without '..'")
        site_roots.append(Path(os.path.normpath(raw)))
    return Settings(path, word("backend_user"), prefix, word("web_user", "www-data"),
                    tuple(site_roots), folder("fpm_pool_dir"), folder("fpm_socket_dir"),
                    argv("fpm_test"), argv("fpm_reload"), folder("fpm_pid_file"))


def check_root_only(path: Path) -> None:
    """Refuse ``path`` unless it and every folder above it belong to root and no one else
    may write them (a sticky folder excepted: only an entry's owner may rename it)."""
    here = Path(path)
    first = True
    while True:
        try:
            st = os.lstat(here)
        except OSError as exc:
            raise MalformedFile(f"{here}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise InvalidInput(f"{here} is a symbolic link: the helper's settings must be "
                               "reached without one")
        writable_by_others = st.st_mode & 0o022 and not (not first and st.st_mode & 0o1000)
        if st.st_uid != 0 or writable_by_others:
            raise InvalidInput(f"{here} is not root's alone (owner uid {st.st_uid}, mode "
                               f"{stat.S_IMODE(st.st_mode):04o}): the helper trusts only "
                               "settings that only root may change")
        if here == here.parent:
            return
        here, first = here.parent, False


# -- the actions ------------------------------------------------------------------------


BATCH_MAX = 32


def run_batch(settings: Settings, stdin: bytes) -> list[str]:
    """Several actions in one run (one sudo, one interpreter): stdin is a JSON list of
    ``{"action": ..., "args": [...], "stdin": "..."}``, carried out in order, each as
    alone; the first that fails stops the rest. What each did, one line each; on a
    failure, :class:`BatchFailed` says how many were done before it."""
    import json

    try:
        steps = json.loads(stdin.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidInput("a batch is a JSON list of actions") from None
    if not isinstance(steps, list) or not 0 < len(steps) <= BATCH_MAX:
        raise InvalidInput(f"a batch is a list of 1 to {BATCH_MAX} actions")
    done: list[str] = []
    for number, step in enumerate(steps):
        if not (isinstance(step, dict) and set(step) <= {"action", "args", "stdin"}
                and isinstance(step.get("action"), str) and step["action"] != "batch"
                and isinstance(step.get("args"), list)
                and all(isinstance(a, str) for a in step["args"])
                and isinstance(step.get("stdin", ""), str)):
            raise BatchFailed(done, f"step {number + 1}: not an action with its arguments")
        try:
            done.append(run(settings, step["action"], step["args"],
                            step.get("stdin", "").encode()))
        except (HostctlError, OSError) as exc:
            message = exc.message if isinstance(exc, HostctlError) else str(exc)
            failed = BatchFailed(done, f"step {number + 1} ({step['action']}): {message}")
            if isinstance(exc, HostctlError):
                failed.exit_status = exc.exit_status  # a refusal stays one
            raise failed from None
    return done


class BatchFailed(OperationFailed):
    """A batch stopped at a failing action; ``done``: what the ones before it did."""

    def __init__(self, done: list[str], message: str) -> None:
        super().__init__(message)
        self.done = done


def run(settings: Settings, action: str, args: Sequence[str], stdin: bytes = b"") -> str:
    """Carry out one action; what it did, in one line."""
    if action not in ACTIONS:
        raise InvalidInput(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
    want = {"user-add": 1, "user-del": 1, "pool-write": 1, "pool-remove": 1}.get(action, 2)
    if len(args) != want:
        raise InvalidInput(f"{action} takes {want} argument(s), not {len(args)}")
    user = settings.check_user(args[0])
    if action == "user-add":
        return user_add(settings, user)
    if action == "user-del":
        return user_del(settings, user)
    if action == "pool-write":
        return pool_write(settings, user, stdin)
    if action == "pool-remove":
        return pool_remove(settings, user)
    path = _check_path(settings, args[1])
    if action == "share":
        return share(settings, user, path)
    if action == "give":
        return give(settings, user, path)
    if action == "take":
        return take(settings, user, path)
    return write_settings(settings, user, path, stdin)


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise InvalidInput(f"no such user {name!r}") from None


def _ours(name: str) -> pwd.struct_passwd | None:
    """The site user, None if there is none; Conflict if the name is another's."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_gecos.split(",")[0] != COMMENT:
        raise Conflict(f"the user {name} exists and is not a hostctl site user")
    return entry


def _tool(name: str) -> str:
    for folder in _TOOLS:
        candidate = f"{folder}/{name}"
        if os.access(candidate, os.X_OK):
            return candidate
    raise OperationFailed(f"{name} is not installed")


def _call(argv: Sequence[str], what: str) -> str:
    try:
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60, env={"PATH": ":".join(_TOOLS), "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationFailed(f"{what}: {exc}") from None
    out = (done.stdout + done.stderr).decode("utf-8", "replace")
    if done.returncode != 0:
        last = next((ln for ln in reversed(out.splitlines()) if ln.strip()), "")
        raise OperationFailed(f"{what} exited with status {done.returncode}: {last.strip()}")
    return out


def user_add(settings: Settings, name: str) -> str:
    entry = _ours(name)
    if entry is None:
        _call([_tool("useradd"), "--system", "--no-create-home", "--home-dir", "/nonexistent",
               "--shell", "/usr/sbin/nologin", "--user-group", "--comment", COMMENT, name],
              f"useradd {name}")
        entry = _user(name)
    group = grp.getgrgid(entry.pw_gid)
    if settings.web_user and settings.web_user not in group.gr_mem:
        _user(settings.web_user)
        _call([_tool("usermod"), "--append", "--groups", group.gr_name, settings.web_user],
              f"adding {settings.web_user} to the group {group.gr_name}")
    return f"user {name} uid {entry.pw_uid} gid {entry.pw_gid}"


def user_del(settings: Settings, name: str) -> str:
    entry = _ours(name)
    if entry is None:
        return f"user {name} is gone already"
    if settings.fpm_pool_dir is not None and settings.pool_file(name).exists():
        raise Conflict(f"the PHP-FPM pool of {name} is still there: remove it first")
    gid = entry.pw_gid
    _call([_tool("userdel"), name], f"userdel {name}")
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        pass
    else:
        if group.gr_name == name:
            _call([_tool("groupdel"), name], f"groupdel {name}")
    return f"user {name} removed"


def _check_path(settings: Settings, raw: str) -> Path:
    """An absolute path without '..', inside a site root (not the root itself)."""
    if not raw.startswith("/") or ".." in raw.split("/") or "\x00" in raw:
        raise InvalidInput(f"{raw!r} is not an absolute path without '..'")
    path = Path(os.path.normpath(raw))
    if not any(path != root and path.is_relative_to(root) for root in settings.site_roots):
        raise InvalidInput(f"{path} is not inside a site root of {settings.path}")
    return path


@contextmanager
def _walk_to(settings: Settings, path: Path) -> Iterator[int]:
    """An O_PATH-free descent to ``path``: every component opened with O_NOFOLLOW from
    the site root down, so no symbolic link (swapped in at any time) leads elsewhere.
    Yields a file descriptor of the folder ``path``."""
    root = next(r for r in settings.site_roots if path.is_relative_to(r))
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags)
    try:
        for part in path.relative_to(root).parts:
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise InvalidInput(f"{path}: {part} is not a folder (a symbolic link "
                                       "or a file)") from None
                raise OperationFailed(f"{path}: {exc.strerror}") from None
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _site_gid(name: str) -> tuple[int, int]:
    entry = _ours(name)
    if entry is None:
        raise InvalidInput(f"no site user {name}")
    return entry.pw_uid, entry.pw_gid


def share(settings: Settings, name: str, path: Path) -> str:
    _, gid = _site_gid(name)
    backend_uid, _ = settings.backend_ids
    with _walk_to(settings, path) as fd:
        st = os.fstat(fd)
        if st.st_uid != backend_uid:
            raise InvalidInput(f"{path} is not {settings.backend_user}'s")
        os.fchown(fd, -1, gid)
        os.fchmod(fd, 0o750)
    return f"{path} shared with {name}"


def _in_shared(settings: Settings, name: str, path: Path) -> tuple[int, int]:
    """The site's uid and gid, once a folder at or above ``path`` (inside the site root)
    is a shared site folder of ``name``: the back end's, of the site's group."""
    uid, gid = _site_gid(name)
    backend_uid, _ = settings.backend_ids
    here = path
    while any(here != root and here.is_relative_to(root) for root in settings.site_roots):
        try:
            st = os.lstat(here)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == backend_uid \
                and st.st_gid == gid:
            return uid, gid
        here = here.parent
    raise InvalidInput(f"{path} is not inside a site folder shared with {name}")


def give(settings: Settings, name: str, path: Path) -> str:
    uid, gid = _in_shared(settings, name, path)
    backend_uid, _ = settings.backend_ids
    with _walk_to(settings, path) as fd:
        changed = _chown_tree(fd, lambda st: st.st_uid in (backend_uid, uid), uid, gid)
    return f"{path}: {changed} entries given to {name}"


def take(settings: Settings, name: str, path: Path) -> str:
    uid, gid = _site_gid(name)
    backend_uid, backend_gid = settings.backend_ids
    with _walk_to(settings, path) as fd:
        changed = _chown_tree(fd, lambda st: st.st_uid == uid or st.st_gid == gid,
                              backend_uid, backend_gid)
    return f"{path}: {changed} entries taken back from {name}"


def _chown_tree(top: int, wanted: object, uid: int, gid: int) -> int:
    """lchown every entry under the folder ``top`` (itself included) for which
    ``wanted(stat)`` holds; symbolic links are changed, never followed."""
    assert callable(wanted)
    changed = 0
    st = os.fstat(top)
    if wanted(st) and (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(top, uid, gid)
        changed += 1
    for _, dirs, files, dirfd in os.fwalk(top=".", dir_fd=top, follow_symlinks=False):
        for entry in (*dirs, *files):
            try:
                st = os.stat(entry, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if wanted(st) and (st.st_uid, st.st_gid) != (uid, gid):
                mode = stat.S_IMODE(st.st_mode)
                os.chown(entry, uid, gid, dir_fd=dirfd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode) and mode & 0o6000:
                    # a chown drops set-id bits; never hand a set-id file to anyone
                    os.chmod(entry, mode & ~0o6000, dir_fd=dirfd, follow_symlinks=False)
                changed += 1
    return changed


def write_settings(settings: Settings, name: str, path: Path, content: bytes) -> str:
    if len(content) > SETTINGS_MAX:
        raise InvalidInput(f"a settings file of more than {SETTINGS_MAX} bytes")
    uid, gid = _in_shared(settings, name, path.parent)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", path.name):
        raise InvalidInput(f"{path.name!r} is not a plain file name")
    backend_uid, _ = settings.backend_ids
    with _walk_to(settings, path.parent) as fd:
        st = os.fstat(fd)
        if st.st_uid not in (backend_uid, uid):
            raise InvalidInput(f"{path.parent} is neither {settings.backend_user}'s nor "
                               f"{name}'s")
        tmp = f".{path.name}.{os.getpid()}.tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o400, dir_fd=fd)
        try:
            os.fchown(out, uid, gid)
            os.fchmod(out, 0o400)
            write_all(out, content)
            os.fsync(out)
            os.close(out)
            out = -1
            os.rename(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            if out >= 0:
                os.close(out)
            try:
                os.unlink(tmp, dir_fd=fd)
            except FileNotFoundError:
                pass
            raise
    return f"{path} written for {name} (0400)"


# -- PHP-FPM pools ----------------------------------------------------------------------


def pool_text(settings: Settings, name: str, body: str, token: str) -> str:
    """The whole pool file: its identity, written here (with a ping that answers
    ``token``), then the back end's directives, each checked against the known ones."""
    web = _user(settings.web_user) if settings.web_user else None
    web_group = grp.getgrgid(web.pw_gid).gr_name if web is not None else name
    head = [f"; written by hostctl's privileged helper for the site user {name}",
            f"[{name}]", f"user = {name}", f"group = {name}",
            f"listen = {settings.socket(name)}",
            f"listen.owner = {settings.web_user or name}", f"listen.group = {web_group}",
            "listen.mode = 0660", f"ping.path = {PING_PATH}", f"ping.response = {token}"]
    seen = set()
    lines = []
    for number, raw in enumerate(body.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not _POOL_KEYS.fullmatch(key):
            raise InvalidInput(f"pool line {number}: {key!r} is not a directive a site's "
                               "pool may set")
        if not _POOL_VALUE.fullmatch(value):
            raise InvalidInput(f"pool line {number}: the value of {key} must be a plain "
                               "word or a double-quoted string without '\"', '\\' or '$'")
        if key in seen:
            raise InvalidInput(f"pool line {number}: {key} is set twice")
        seen.add(key)
        lines.append(f"{key} = {value}")
    if "pm" not in seen:
        lines = ["pm = ondemand", "pm.max_children = 5", "pm.process_idle_timeout = 30s",
                 *lines]
    return "\n".join([*head, *lines, ""])


@contextmanager
def _pools_locked(settings: Settings) -> Iterator[None]:
    assert settings.fpm_pool_dir is not None
    with flocked(settings.fpm_pool_dir / ".hostctl.lock", follow=False):
        yield


def _put(path: Path, content: bytes | None) -> None:
    if content is None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    write_atomic(path, content, mode=0o600)  # the pool may hold the site's password


def pool_write(settings: Settings, name: str, body: bytes) -> str:
    _site_gid(name)
    if len(body) > SETTINGS_MAX:
        raise InvalidInput(f"a pool of more than {SETTINGS_MAX} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the pool is not UTF-8 text") from None
    token = secrets.token_hex(8)
    new = pool_text(settings, name, text, token).encode()
    path = settings.pool_file(name)
    socket = settings.socket(name)
    with _pools_locked(settings):
        try:
            old: bytes | None = path.read_bytes()
        except FileNotFoundError:
            old = None
        if old is not None and _same_but_token(old, new):
            if ping(socket) == _token_of(old):
                return f"pool {path} unchanged"
        assert settings.fpm_socket_dir is not None
        settings.fpm_socket_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        _put(path, new)
        try:
            if settings.fpm_test:
                _call(settings.fpm_test, "php-fpm -t")
            _reload(settings)
            _wait_served(socket, token)
        except (OperationFailed, InvalidInput):
            # the pool as it was, served again before the refusal is told
            _put(path, old)
            if old is not None:
                _reload(settings)
                with suppress(OperationFailed):
                    _wait_served(socket, _token_of(old))
            raise
    return f"pool {path} written; php-fpm serves {socket}"


def _token_of(text: bytes) -> str:
    found = re.search(rb"^ping\.response = ([0-9a-f]+)$", text, re.M)
    return found[1].decode() if found else ""


def _same_but_token(old: bytes, new: bytes) -> bool:
    def strip(text: bytes) -> bytes:
        return re.sub(rb"^ping\.response = .*$", b"", text, flags=re.M)
    return strip(old) == strip(new)


def pool_remove(settings: Settings, name: str) -> str:
    path = settings.pool_file(name)
    with _pools_locked(settings):
        if not path.exists():
            return f"pool {path} is gone already"
        _put(path, None)
        _reload(settings)
        socket = settings.socket(name)
        deadline = time.monotonic() + SOCKET_WAIT
        while socket.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return f"pool {path} removed"


def _reload(settings: Settings) -> None:
    if settings.fpm_reload:
        _call(settings.fpm_reload, "reloading php-fpm")
        return
    if settings.fpm_pid_file is None:
        raise OperationFailed(f"{settings.path}: neither fpm_reload nor fpm_pid_file is set")
    try:
        pid = int(settings.fpm_pid_file.read_text().strip())
        if os.stat(settings.fpm_pid_file).st_uid != 0:
            raise OperationFailed(f"{settings.fpm_pid_file} is not root's")
        os.kill(pid, signal.SIGUSR2)
    except (OSError, ValueError) as exc:
        raise OperationFailed(f"reloading php-fpm (pid file {settings.fpm_pid_file}): "
                              f"{exc}") from None


def _wait_served(path: Path, token: str) -> None:
    """Until php-fpm answers the pool's ping on ``path`` with ``token``: the master
    serves the pool as just written, not only a socket left from before the reload."""
    deadline = time.monotonic() + SOCKET_WAIT
    answer = ""
    while True:
        answer = ping(path)
        if answer == token:
            return
        if time.monotonic() >= deadline:
            raise OperationFailed(f"php-fpm does not serve the pool on {path} after "
                                  f"{SOCKET_WAIT:g} s (its ping answered: "
                                  f"{answer or 'nothing'})")
        time.sleep(0.02)


def ping(path: Path) -> str:
    """The answer of the pool's ping on the FastCGI socket ``path`` ('' if none)."""
    try:
        body = fastcgi_get(path, PING_PATH)
    except OSError:
        return ""
    return body.split(b"\r\n\r\n", 1)[-1].strip().decode("ascii", "replace")


def fastcgi_get(path: Path, uri: str, timeout: float = 5.0, *,
                script: str = "") -> bytes:
    """A GET of ``uri`` over FastCGI on the UNIX socket ``path`` (the PHP file
    ``script`` runs it; none: the pool answers itself, as to its ping): the responder's
    whole output (headers, a blank line, the body)."""
    import socket as sockets
    import struct

    def record(kind: int, content: bytes) -> bytes:
        return struct.pack(">BBHHBx", 1, kind, 1, len(content), 0) + content

    def pair(key: str, value: str) -> bytes:
        k, v = key.encode(), value.encode()
        return bytes([len(k)]) + bytes([len(v)]) + k + v

    params = b"".join(pair(k, v) for k, v in (
        ("REQUEST_METHOD", "GET"), ("SCRIPT_NAME", uri if not script else "/index.php"),
        ("SCRIPT_FILENAME", script or uri),
        ("REQUEST_URI", uri), ("QUERY_STRING", ""), ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1")))
    conn = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(str(path))
        conn.sendall(record(1, struct.pack(">HB5x", 1, 0)) + record(4, params)
                     + record(4, b"") + record(5, b""))
        data = b""
        out = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            while len(data) >= 8:
                _, kind, _, length, padding = struct.unpack(">BBHHB", data[:7])
                if len(data) < 8 + length + padding:
                    break
                content = data[8:8 + length]
                data = data[8 + length + padding:]
                if kind == 6:
                    out += content
                elif kind == 3:
                    return out
        return out
    finally:
        conn.close()


def sudo_argv(interpreter: str) -> list[str]:
    """How a back end that is not root runs the helper: through sudo, with hostctl's
    interpreter isolated (``-I``: no ``PYTHON*`` variable, no user site-packages, not the
    working folder), so that nothing of the environment sudo lets through (a kept
    ``HOME``'s ``~/.local``, a kept ``PYTHONPATH``) reaches the code root runs."""
    return ["sudo", "-n", interpreter, "-I", "-m", "hostctl", "privileged"]


def sudoers_line(settings_path: Path, backend_user: str, interpreter: str) -> str:
    """The one line that lets ``backend_user`` run the helper as :func:`sudo_argv` does;
    InvalidInput for a name sudoers would read otherwise (a space, ``,:=\\#()*?[]!``)."""
    for what, value in (("the interpreter", interpreter), ("the settings file",
                        str(settings_path)), ("the back-end user", backend_user)):
        if not value or re.search(r"[\s,:=\\#()*?\[\]!\"']", value):
            raise InvalidInput(f"{what} {value!r} cannot be named in a sudoers line as it "
                               "is: move it to a path of plain characters")
    command = " ".join(sudo_argv(interpreter)[2:])
    return f"{backend_user} ALL=(root) NOPASSWD: {command} {settings_path} *"
