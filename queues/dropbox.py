"""The front end's door: a drop box it may write into, and receipts it may read.

Postfix's maildrop model. The back end (the home's owner) runs every task; a front end (a
web UI, another UNIX user in the front-end group) may only:

- drop a submission into ``spool/incoming/`` (mode 3730: group write and search, sticky,
  setgid, no read, so it can neither list the folder nor touch another user's drop);
- read ``spool/outbox/RECEIPT.json`` (the status of what it submitted) and
  ``spool/outbox/RECEIPT.log`` (its log), where RECEIPT is a 32-hex-digit token it chose
  and wrote into its submission. The outbox is 2710: the group may open a name it knows,
  but not list the folder, so a receipt is a capability.

The home and the spool are 0710 with the front-end group: the group can pass through to
those two folders and nothing else (contexts, config, logs and every other spool folder
stay 0700). ``hostctl frontend setup --group G`` makes this layout; ``hostctl doctor``
checks it.

The back end admits a drop (see Spool.admit) only if it is a regular file of at most
64 KiB holding one JSON object with no keys but :data:`DROP_KEYS`, of a known task type,
on an existing context, with options that type declares and context options that
provision-save would accept and ``[frontend] context_options`` lists (see
Registry.check_envelope); it records the dropping uid. Anything else goes to
``spool/rejected/`` with the reason, which the receipt also carries (of a file too large
to read, its receipt is looked for in its head: see :func:`receipt_of`).
"""

from __future__ import annotations

import errno
import grp
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostctl.errors import ForeignHome, InvalidInput, NotFound, OperationFailed
from hostctl.files import tail, write_all
from hostctl.paths import Paths
from hostctl.queues.admission import RECEIPT
from hostctl.queues.layout import (
    HOME_MODE,
    INCOMING_MODE,
    OUTBOX_MODE,
    SHARED_FILE_MODE,
    SPOOL_MODE,
)
from hostctl.queues.model import (
    DEFAULT_PRIORITY,
    MAX_TASK_BYTES,
    new_id,
    valid_id,
)
from hostctl.queues.spool import Spool

# -- the front end's side ----------------------------------------------------------------

def is_frontend(paths: Paths) -> bool:
    """True when this user does not own the home and so must go through the drop box.

    Root is never a front end: it may read any home, and writing into another user's home
    is refused (see Paths.ensure_home). A user that a folder above the home shuts out gets
    OperationFailed naming that folder, whatever the command.
    """
    euid = os.geteuid()
    try:
        owner = os.stat(paths.home).st_uid
    except FileNotFoundError:
        return False
    except PermissionError:
        # only a folder above the home can deny a stat of it: say which, for every command
        # (not the drop box's or a foreign home's message, which would send the user to
        # the wrong folder)
        blocker = blocked_above(paths.home)
        raise OperationFailed(
            f"cannot reach {paths.home}: permission denied on {blocker or paths.home.parent} "
            "(a folder above the home that this user may not pass through; its owner "
            "must give search permission, x, to this user or its group)") from None
    return owner != euid and euid != 0


def blocked_above(path: Path) -> Path | None:
    """The folder above ``path`` that denies this user search permission, if any."""
    path = Path(os.path.abspath(path))
    for step in [*reversed(path.parents), path][1:]:
        try:
            os.stat(step)
        except PermissionError:
            return step.parent
        except OSError:
            return None
    return None


def refuse_frontend(paths: Paths, command: str) -> None:
    """A front end may only submit and follow its own tasks; say so for anything else."""
    if is_frontend(paths) and not os.access(paths.home, os.R_OK):
        raise ForeignHome(
            f"home {paths.home} belongs to another user; a front end may only use "
            f"`task add`, `task list`, `task show` and `task log` (not `{command}`)")


@dataclass(frozen=True)
class Dropped:
    id: str
    receipt: str


def submit(paths: Paths, type_name: str, context: str, options: Mapping[str, str],
           context_options: Mapping[str, str], priority: int = DEFAULT_PRIORITY,
           delay: float = 0.0) -> Dropped:
    """Drop a submission into the spool's drop box; return its id and receipt."""
    incoming = paths.spool / "incoming"
    import secrets  # here: only a front end's submission needs a receipt token

    task_id, receipt = new_id(), secrets.token_hex(16)
    doc: dict[str, Any] = {"id": task_id, "type": type_name, "context": context,
                           "options": dict(options), "context_options": dict(context_options),
                           "priority": priority, "receipt": receipt}
    if delay:
        doc["delay"] = delay
    data = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
    if len(data) > MAX_TASK_BYTES:
        raise InvalidInput(f"the submission is larger than {MAX_TASK_BYTES} bytes")
    tmp = incoming / f".{task_id}.{receipt[:8]}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     SHARED_FILE_MODE)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT):
            raise OperationFailed(
                f"cannot submit through the drop box of {paths.home}: {exc.strerror}; "
                "its owner must run `hostctl frontend setup --group GROUP` with a group "
                "you are in") from None
        raise OperationFailed(f"cannot submit the task: {exc.strerror}") from None
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, SHARED_FILE_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, incoming / f"{task_id}.task")
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OperationFailed(f"cannot submit the task: {exc.strerror or exc}") from None
    return Dropped(task_id, receipt)


def read_receipt(paths: Paths, receipt: str) -> dict[str, Any] | None:
    """The status the back end published for a receipt; None while not yet admitted."""
    if not RECEIPT.fullmatch(receipt):
        raise InvalidInput("a receipt is 32 lower-case hex digits")
    try:
        data = (paths.spool / "outbox" / f"{receipt}.json").read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise OperationFailed(f"cannot read the receipt: {exc.strerror}") from None
    doc = json.loads(data)
    return doc if isinstance(doc, dict) else None


def receipt_log(paths: Paths, receipt: str) -> Path:
    if not RECEIPT.fullmatch(receipt):
        raise InvalidInput("a receipt is 32 lower-case hex digits")
    return paths.spool / "outbox" / f"{receipt}.log"


class ReceiptBook:
    """Where a front-end user keeps the receipts of what it submitted (its own files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def default(cls) -> ReceiptBook:
        env = os.environ.get("HOSTCTL_RECEIPTS")
        if env:
            return cls(Path(env))
        from platformdirs import user_state_path

        return cls(user_state_path("hostctl") / "receipts")

    def keep(self, dropped: Dropped) -> bool:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.folder / dropped.id
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(dropped.receipt + "\n")
            return True
        except OSError:
            return False

    def find(self, task_id: str) -> str:
        try:
            token = (self.folder / task_id).read_text().strip()
        except (OSError, ValueError):
            token = ""
        if not RECEIPT.fullmatch(token):
            raise NotFound(f"no receipt for task {task_id}: a front end can only follow "
                           "the tasks it submitted (give --receipt if it was kept elsewhere)")
        return token

    def ids(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.folder) if len(n) == 20)
        except OSError:
            return []


# -- the back end's side: set-up --------------------------------------------------------

def setup(paths: Paths, group: str) -> list[str]:
    """Make the drop-box layout for ``group``; return what was changed."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise NotFound(f"no group {group!r}") from None
    paths.ensure_home()
    Spool(paths.spool, paths.logs).ensure()
    wanted = [(paths.home, HOME_MODE), (paths.spool, SPOOL_MODE),
              (paths.spool / "incoming", INCOMING_MODE), (paths.spool / "outbox", OUTBOX_MODE)]
    changes = []
    for path, mode in wanted:
        st = os.stat(path)
        if st.st_gid != gid:
            try:
                os.chown(path, -1, gid)
            except PermissionError:
                raise OperationFailed(
                    f"cannot give {path} to group {group}: the home's owner must be a member "
                    f"of {group} (or run this as root)") from None
            changes.append(f"{path}: group {group}")
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
            changes.append(f"{path}: mode {mode:04o}")
    return changes


def frontend_gid(paths: Paths) -> int | None:
    """The front-end group, if the drop box is set up; else None.

    It is set up when incoming/ or outbox/ is open to its group in any way (group bits,
    setgid, sticky). Its group is the one most of the home, the spool, incoming/ and
    outbox/ have among those open to their group (incoming/'s on a tie): one folder whose
    mode or group went wrong is then reported and repaired by doctor, not taken for the
    truth (a chmod 0777 of incoming/ must not make doctor lock the front end out).
    """
    from collections import Counter

    incoming, outbox = paths.spool / "incoming", paths.spool / "outbox"
    shared: dict[Path, int] = {}
    for path in (incoming, outbox, paths.home, paths.spool):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_mode & (0o070 | stat.S_ISGID | stat.S_ISVTX):
            shared[path] = st.st_gid
    if incoming not in shared and outbox not in shared:
        return None
    return Counter(shared.values()).most_common(1)[0][0]


# -- the front end's view of its tasks ---------------------------------------------------

def frontend_show(paths: Paths, task_id: str, receipt: str | None = None) -> dict[str, Any]:
    """What the back end published for one of this front end's tasks."""
    if not valid_id(task_id):
        raise InvalidInput(f"malformed task id {task_id!r} (20 hex digits)")
    token = receipt or ReceiptBook.default().find(task_id)
    doc = read_receipt(paths, token)
    if doc is None:
        return {"id": task_id, "status": "incoming", "status_code": 0,
                "reason": "submitted; not admitted by the back end yet", "attempts": [],
                "result": {}}
    if doc.get("id") not in (task_id, ""):
        raise NotFound(f"the receipt given is not task {task_id}'s")
    return doc


def frontend_list(paths: Paths) -> list[dict[str, Any]]:
    book = ReceiptBook.default()
    out = []
    for task_id in book.ids():
        try:
            out.append(frontend_show(paths, task_id))
        except (NotFound, InvalidInput, OperationFailed, ValueError):
            continue
    return out


def frontend_log(paths: Paths, task_id: str, follow: bool, receipt: str | None = None,
                 poll: float = 0.2) -> Iterator[bytes]:
    """A front end's own task log; with ``follow``, until the task has ended."""
    token = receipt or ReceiptBook.default().find(task_id)
    return tail(receipt_log(paths, token), follow,
                lambda: (frontend_show(paths, task_id, token).get("status_code") or 0) > 0,
                poll)
