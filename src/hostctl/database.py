"""The cluster's PostgreSQL, as every part of hostctl reaches it (psycopg 3).

A DSN is a libpq connection string or URI (``[cluster] dsn``). Its password is never
printed: :func:`shown` is what a message says of a DSN, and a connection error is said
without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
from psycopg import conninfo as libpq

from hostctl.errors import InvalidInput, OperationFailed, Unreachable

CONNECT_TIMEOUT = 10
#: joined into a statement (``FROM ..., ASYNC AS lazy``): its commit does not wait for
#: the disk
ASYNC: LiteralString = "(SELECT set_config('synchronous_commit', 'off', true))"
#: a statement that commits synchronously while changing nothing: a logical message (a
#: WAL record of no effect; a logical decoding consumer that asks for messages sees it,
#: prefix ``hostctl``) in a transaction of its own; waiting for its flush waits for every
#: commit before it. Sent in one round trip with the write before it: pipeline mode,
#: libpq 14 or later (psycopg[binary] brings its own)
FLUSH: LiteralString = "SELECT pg_logical_emit_message(true, 'hostctl', '')"


def parse_dsn(dsn: str) -> dict[str, str]:
    """The connection parameters of a DSN; InvalidInput (saying nothing of its password)
    when libpq cannot read it."""
    if not dsn.strip():
        raise InvalidInput("no cluster: set [cluster] dsn in config.toml or "
                           "HOSTCTL_CLUSTER_DSN")
    try:
        params = libpq.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise InvalidInput("[cluster] dsn is not a PostgreSQL connection string "
                           "(key=value pairs or a postgresql:// URI)") from None
    return {k: str(v) for k, v in params.items() if v is not None}


def shown(dsn: str) -> str:
    """A DSN as messages show it: where and who, never a password."""
    p = parse_dsn(dsn)
    where = p.get("host", "localhost") + (f":{p['port']}" if "port" in p else "")
    return f"{p.get('user', '(default user)')}@{where}/{p.get('dbname', '(default database)')}"


def open_connection(dsn: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A new connection; OperationFailed, in one line without the password, when it
    cannot be made."""
    params = parse_dsn(dsn)
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    params.setdefault("application_name", "hostctl")
    # a server that went away without a word (a power cut, a cable) is noticed within
    # a minute and a half rather than the system's two hours
    for key, value in (("keepalives", "1"), ("keepalives_idle", "30"),
                       ("keepalives_interval", "10"), ("keepalives_count", "6")):
        params.setdefault(key, value)
    try:
        return psycopg.connect(libpq.make_conninfo("", **params), autocommit=autocommit)
    except psycopg.Error as exc:
        raise database_error(f"cannot reach the cluster's database {shown(dsn)}: "
                             f"{said(exc, params.get('password'))}", exc) from None


def said(exc: BaseException, password: str | None = None) -> str:
    """A database error in one line, without the password."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return reason.replace(password, "********") if password else reason


@contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection, in one transaction committed at the end of the block (rolled back on
    an error); OperationFailed, in one line without the password, for any failure."""
    try:
        with open_connection(dsn) as conn:  # commits, or rolls back, then closes
            yield conn
    except psycopg.Error as exc:
        raise OperationFailed(f"the cluster's database {shown(dsn)}: "
                              f"{said(exc, parse_dsn(dsn).get('password'))}") from None


class DatabaseError(OperationFailed):
    """A statement failed: said without the password, with its SQLSTATE kept for the
    caller that tells a conflict (a unique key) from a failure. Made by
    :func:`database_error`: a lost connection is a :class:`LostDatabase`."""

    def __init__(self, message: str, exc: psycopg.Error) -> None:
        super().__init__(message)
        self.sqlstate = exc.sqlstate or ""

    @property
    def lost(self) -> bool:
        """The connection broke, or none could be made: the same may work later."""
        return isinstance(self, Unreachable)

    @property
    def unique_violation(self) -> bool:
        return self.sqlstate == "23505"


class LostDatabase(DatabaseError, Unreachable):
    """The database could not be reached, or the connection broke on the way."""


def database_error(message: str, exc: psycopg.Error) -> DatabaseError:
    if isinstance(exc, psycopg.OperationalError):
        return LostDatabase(message, exc)
    return DatabaseError(message, exc)


class Session:
    """One long-lived connection to the cluster's database, as a store keeps it: made on
    first use and again after it broke (a restarted server), autocommit, so that a read
    holds nothing and a write block (:meth:`transaction`) is one transaction of its own.
    A connection found lost is made again and a read run once more; inside a write the
    transaction is gone with it, and the write fails whole."""

    def __init__(self, dsn: str, missing: str = "",
                 on_connect: Callable[[psycopg.Connection[Any]], None] | None = None) -> None:
        self.dsn = dsn
        self.missing = missing  # what to say when hostctl's tables are not there
        #: called with each new connection (of this process), before it is used
        self.on_connect = on_connect
        self._conn: psycopg.Connection[Any] | None = None
        self._in_write = False
        self._pid = os.getpid()

    def connection(self) -> psycopg.Connection[Any]:
        if self._pid != os.getpid():
            # a forked child (a task's function): the parent's socket is the parent's;
            # closing it here would end the parent's session too
            self._conn, self._pid = None, os.getpid()
        if self._conn is None or self._conn.closed or self._conn.broken:
            conn = open_connection(self.dsn, autocommit=True)
            if self.on_connect is not None:
                try:
                    self.on_connect(conn)
                except psycopg.Error as exc:
                    conn.close()
                    raise self.failed(exc) from None
                except BaseException:
                    conn.close()
                    raise
            self._conn = conn
        return self._conn

    @property
    def forked(self) -> bool:
        """Whether this is a forked child of the process that made the session."""
        return self._pid != os.getpid()

    def rows(self, query: LiteralString, params: tuple[Any, ...] | dict[str, Any] = (),
             retry: bool = True) -> list[Any]:
        """Run one statement; its rows (none for a statement that returns none). A
        connection found lost is made again and the statement run once more, unless
        ``retry`` is false (a write that may have been done before the loss)."""
        for again in (True, False) if retry else (False,):
            try:
                with self.connection().cursor() as cur:
                    cur.execute(query, params)
                    return cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError as exc:
                lost = self._conn is not None and self._conn.broken
                if not (again and lost) or self._in_write:
                    raise self.failed(exc) from None
            except psycopg.Error as exc:
                raise self.failed(exc) from None
        raise AssertionError("unreachable")

    def rows_heard_first(self, query: LiteralString,
                         params: tuple[Any, ...] | dict[str, Any] = (),
                         flush: LiteralString = FLUSH,
                         flush_params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one write whose listeners (its NOTIFYs) are told a disk flush sooner, and
        return once it is on the disk as a synchronous commit would: the statement is
        committed without waiting for the disk (``query`` sets ``synchronous_commit`` off
        for itself; see :data:`ASYNC`), and a second transaction, sent with it in one
        round trip, writes a record of no effect (a logical message; ``flush``, which may
        tell a listener that the write is on the disk, must write one) and commits
        synchronously; its flush takes every earlier commit with it. Until then nothing
        was said to the caller, and whoever acts on the row before must make a
        synchronous commit of its own first (its flush, too, takes this one). Never
        tried again: the write may have been done before a connection broke (the caller
        looks). A connection a failure came through is not used again.

        The first transaction is ended by its own COMMIT inside the pipeline, not by a
        pipeline sync: psycopg's ``Pipeline.sync()`` waits for the answers before the
        next statement is sent, which cost the flush a round trip through this process
        (the server runs the second transaction right after the first; PostgreSQL 15
        and later tell listeners at the COMMIT, earlier ones at the sync)."""
        conn = self.connection()
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                cur = conn.execute(query, params)
                conn.execute("COMMIT")  # committed (and heard) here
                conn.execute(flush, flush_params)  # its own transaction, ended by the sync
            return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            # what a failed pipeline leaves unread (its other results, its mode) would
            # be read by the next statement: the connection goes with it (a unique
            # violation, the one failure a caller expects, is rare)
            self.close()
            raise self.failed(exc) from None
        except IndexError:
            # an error at a commit can leave psycopg's pipeline one result out of step
            # with what it sent: what became of the write is not known here
            self.close()
            raise self.failed(psycopg.OperationalError(
                "the connection's answers went out of step with its statements")) from None
        except BaseException:
            self.close()  # (an interrupt) maybe inside the first transaction: not reused
            raise

    @contextmanager
    def transaction(self, lock: int | None = None, probe: bool = True) -> Iterator[None]:
        """One transaction, holding the advisory lock ``lock`` if given. With ``probe``,
        a connection lost meanwhile (a restarted server) is noticed, and made again,
        before it begins (one round trip more); without, the transaction fails whole
        (LostDatabase) and a caller that tries again gets a new connection."""
        if probe:
            self.rows("SELECT 1")
        conn = self.connection()
        try:
            with conn.transaction():
                if lock is not None:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                self._in_write = True
                try:
                    yield
                finally:
                    self._in_write = False
        except psycopg.Error as exc:
            raise self.failed(exc) from None

    def failed(self, exc: psycopg.Error) -> DatabaseError:
        if isinstance(exc, psycopg.errors.UndefinedTable) and self.missing:
            return database_error(f"the cluster's database {shown(self.dsn)} has no "
                                  f"{self.missing}: run `hostctl cluster init`", exc)
        return database_error(f"the cluster's database {shown(self.dsn)}: "
                              f"{said(exc, parse_dsn(self.dsn).get('password'))}", exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
