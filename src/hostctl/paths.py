"""Where hostctl keeps its files: one object that every layer asks, and tests repoint.

The home is resolved in one order: the ``--home`` flag, then ``HOSTCTL_HOME``, then
platformdirs' user data directory for "hostctl" of the user who runs hostctl (the backend
user). Layout inside the home::

    HOME/                  0700, owned by the backend user
      config.toml          optional settings (missing file = defaults)
      contexts/            0700
        NAME.toml          one context per file, 0600, written atomically
        .lock              serialises every context write (read-modify-write)
      spool/               the task queue (docs/spool.md)
      logs/                task logs
      hostctl-home.toml    the home's format (formats.py, docs/upgrade.md)

hostctl creates the home on its first write, with mode 0700, and refuses to write into a
home that belongs to another user: the classic mistake of running the backend as root in
the backend user's home would otherwise leave root-owned files the backend cannot touch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hostctl.errors import ForeignHome, InvalidInput, OperationFailed
from hostctl.formats import settle_home

HOME_ENV = "HOSTCTL_HOME"


def default_home() -> Path:
    import platformdirs  # imported here: only needed when no home is given

    return Path(platformdirs.user_data_dir("hostctl", appauthor=False))


def resolve_home(flag: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The home from the flag, else the environment, else the platform default."""
    env = os.environ if environ is None else environ
    raw = flag if flag else env.get(HOME_ENV, "")
    if not raw:
        return default_home()
    if "\x00" in raw:
        raise InvalidInput("the home path contains a NUL byte")
    return Path(os.path.abspath(os.path.expanduser(raw)))


@dataclass(frozen=True)
class Paths:
    """Every path hostctl uses, derived from the home."""

    home: Path

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @property
    def contexts(self) -> Path:
        return self.home / "contexts"

    @property
    def spool(self) -> Path:
        return self.home / "spool"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def context_file(self, bare_name: str) -> Path:
        return self.contexts / f"{bare_name}.toml"

    def ensure_home(self) -> Path:
        """Create the home (0700) if needed and check that it is ours to write into, and of
        a format this hostctl writes (a new home gets its marker: formats.py)."""
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.home.stat()
        except OSError as exc:
            raise OperationFailed(f"cannot create home {self.home}: {exc.strerror}") from exc
        if st.st_uid != os.geteuid():
            raise ForeignHome(
                f"home {self.home} belongs to uid {st.st_uid}, not to uid {os.geteuid()} "
                "who runs hostctl; run hostctl as its owner or choose another --home"
            )
        settle_home(self.home)
        return self.home

    def ensure_dir(self, path: Path) -> Path:
        """Create a private folder under the (checked) home."""
        self.ensure_home()
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise OperationFailed(f"cannot create {path}: {exc.strerror}") from exc
        return path
