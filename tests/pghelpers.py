"""The test session's one PostgreSQL (``pg_server`` in conftest.py: a private server made
with initdb, run as an unprivileged user) and the databases the tests make on it, each
owned by the role ``hostctl``, the back end's."""

from __future__ import annotations

import itertools
import os
from contextlib import suppress
from typing import Any

from provisionhelpers import PgCluster

#: the password of the role ``hostctl`` (a test asserts it is never shown)
SECRET = "Cl-" + os.urandom(8).hex()
_made = itertools.count(1)


def new_database(pg: PgCluster, prefix: str = "db", init: bool = False) -> str:
    """A fresh database of the ``hostctl`` role; its DSN (with the cluster's schema made
    when ``init``)."""
    name = f"{prefix}{next(_made)}"
    # as docs/cluster.md sets one up: no role but hostctl's may connect to it
    pg.psql(f"CREATE DATABASE {name} OWNER hostctl; "
            f"REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC")
    dsn = f"host=127.0.0.1 port={pg.port} dbname={name} user=hostctl password={SECRET}"
    if init:
        from hostctl.runners import cluster

        cluster.init(dsn)
    return dsn


def dbname(dsn: str) -> str:
    return dict(p.split("=", 1) for p in dsn.split())["dbname"]


class AnswersHeld:
    """A TCP proxy in front of the test server that, once :meth:`hold` is called, keeps
    the server's answers from the client until the client has sent ``marker`` (the text
    of a statement), or until ``patience`` seconds have passed (``waited_out``): a client
    that reads an answer before it sends that statement waits out the patience."""

    def __init__(self, port: int, marker: bytes, patience: float = 3.0) -> None:
        import socket
        import threading

        self._port, self._marker, self._patience = port, marker, patience
        self._holding = threading.Event()
        self._seen = threading.Event()
        self.waited_out = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def dsn(self, dsn: str) -> str:
        """``dsn`` through this proxy, in the clear (the proxy reads the statements)."""
        return " ".join(f"port={self.port}" if part.startswith("port=") else part
                        for part in dsn.split()) + " sslmode=disable"

    def hold(self) -> None:
        self._seen.clear()
        self._holding.set()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._port))
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: Any, server: Any) -> None:
        tail = b""
        with suppress(OSError):  # either side gone: the connection ends
            while data := client.recv(65536):
                if self._holding.is_set() and self._marker in tail + data:
                    self._seen.set()
                tail = (tail + data)[-len(self._marker):]
                server.sendall(data)
        self._end(client, server)
        client.close()

    def _down(self, server: Any, client: Any) -> None:
        with suppress(OSError):
            while data := server.recv(65536):
                if self._holding.is_set() and not self._seen.wait(self._patience):
                    self.waited_out = True
                client.sendall(data)
        self._end(client, server)
        server.close()

    @staticmethod
    def _end(*sockets: Any) -> None:
        import socket

        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
