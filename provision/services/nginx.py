"""nginx: one vhost file per site, tested with ``nginx -t``, then a reload.

The vhosts live in ``CONFIG/nginx/vhost.d/SITE.conf`` (CONFIG: the server's
``config_path``, else ``HOME/config/SERVER``); the server's nginx.conf includes them with::

    include CONFIG/nginx/vhost.d/*.conf;

Every change (write or remove) holds ``CONFIG/nginx/.lock`` through the write, the
``nginx -t`` and the reload, so two tasks never test each other's half-made change. When
the test or the reload fails, the folder is put back as it was and the task fails.
When there is no nginx program at all, the vhost is written but neither tested nor
reloaded, and the task ends in warning.

Everything written into a vhost comes from validated values: host names (uri,
aliases), listen addresses checked by :mod:`ipaddress`, ports, and paths and URLs free of
the characters nginx would read as syntax or variables.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hostctl.contexts.store import Context
from hostctl.errors import InvalidInput, OperationFailed
from hostctl.files import write_atomic
from hostctl.paths import Paths
from hostctl.provision import layout
from hostctl.provision.job import Job

_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_URL = re.compile(r"https?://[A-Za-z0-9._~:/?#\[\]@!&'()*+,=%-]+")
#: what nginx would read as the end of a quoted string, an escape or a variable
_UNSAFE_PATH = re.compile(r'["\\$\x00-\x1f\x7f]')
DEFAULT_BINARY = "/usr/sbin/nginx"


@dataclass(frozen=True)
class Vhost:
    site: str  # the context name, without @: the file's name
    uri: str
    aliases: tuple[str, ...]
    redirection: bool
    docroot: str
    index: tuple[str, ...]
    enabled: bool
    disable_url: str = ""


def check_host(value: str, what: str) -> str:
    if not (_HOST.fullmatch(value) and len(value) <= 253):
        raise InvalidInput(f"{what} {value!r} is not a lower-case host name")
    return value


def check_path(value: str, what: str) -> str:
    if not os.path.isabs(value) or _UNSAFE_PATH.search(value):
        raise InvalidInput(f"{what} {value!r} must be an absolute path without quotes, "
                           "backslashes, '$' or control characters (nginx would misread it)")
    return value


class Nginx:
    type = "nginx"

    def __init__(self, server: Context, paths: Paths) -> None:
        self.server = server
        self.paths = paths
        self.config_dir = layout.server_config_dir(paths, server) / "nginx"
        self.vhost_dir = self.config_dir / "vhost.d"

    # -- what the server says ---------------------------------------------------------

    def binary(self) -> str | None:
        configured = self.server.get("nginx_binary")
        if isinstance(configured, str) and configured:
            return configured if os.access(configured, os.X_OK) else None
        return shutil.which("nginx") or (DEFAULT_BINARY if os.access(DEFAULT_BINARY, os.X_OK)
                                         else None)

    def _conf_args(self) -> list[str]:
        conf = self.server.get("nginx_conf")
        return ["-c", conf] if isinstance(conf, str) and conf else []

    def reload_argv(self, binary: str) -> list[str]:
        configured = str(self.server.get("http_restart_cmd") or "")
        if configured.strip():
            # the administrator's own setting, never user data; split as a shell would,
            # run without one
            try:
                return shlex.split(configured)
            except ValueError as exc:
                raise InvalidInput(f"{self.server.display_name}: http_restart_cmd: {exc} "
                                   f"in {configured!r}") from None
        return [binary, *self._conf_args(), "-s", "reload"]

    def listens(self) -> list[str]:
        port = int(self.server.get("http_port") or 80)
        addresses = self.server.get("ip_addresses") or []
        assert isinstance(addresses, list)
        out = []
        for raw in addresses:
            try:
                ip = ipaddress.ip_address(raw)
            except ValueError:
                raise InvalidInput(f"{self.server.display_name}: ip_addresses: {raw!r} is "
                                   "not an IP address") from None
            out.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
        return out or [str(port)]

    def include_line(self) -> str:
        return f"include {self.vhost_dir}/*.conf;"

    def vhost_path(self, site: str) -> Path:
        return self.vhost_dir / f"{site}.conf"

    # -- the vhost file ---------------------------------------------------------------

    def render(self, vhost: Vhost) -> str:
        uri = check_host(vhost.uri, "uri")
        aliases = [check_host(a, "alias") for a in vhost.aliases if a != uri]
        listens = [f"    listen {spec};" for spec in self.listens()]
        names = " ".join([uri] if vhost.redirection else [uri, *aliases])
        lines = [f"# @{vhost.site}: written by hostctl; a verify of the site rewrites it", ""]
        if vhost.redirection and aliases:
            lines += ["server {", *listens, f"    server_name {' '.join(aliases)};",
                      f"    return 301 http://{uri}$request_uri;", "}", ""]
        lines += ["server {", *listens, f"    server_name {names};"]
        if vhost.enabled:
            docroot = check_path(vhost.docroot, "the document root")
            index = " ".join(_index_name(i) for i in vhost.index) or "index.html"
            lines += [f'    root "{docroot}";', f"    index {index};",
                      "    location / {", "        try_files $uri $uri/ =404;", "    }"]
        elif vhost.disable_url:
            if not _URL.fullmatch(vhost.disable_url):
                raise InvalidInput(f"web_disable_url {vhost.disable_url!r} is not a plain "
                                   "http(s) URL")
            lines += [f'    return 302 "{vhost.disable_url}";']
        else:
            page = (f"<!doctype html><title>Site disabled</title><h1>Site disabled</h1>"
                    f"<p>{uri} is disabled.</p>")
            lines += ["    default_type text/html;", "    location / {",
                      f"        return 503 '{page}';", "    }"]
        lines += ["}", ""]
        return "\n".join(lines)

    def write(self, job: Job, vhost: Vhost) -> Path:
        """Write the site's vhost, test the configuration and reload nginx."""
        path = self.vhost_path(vhost.site)
        text = self.render(vhost)
        with self._locked():
            self._change(job, path, text.encode())
        return path

    def remove(self, job: Job, site: str) -> bool:
        """Remove the site's vhost (then test and reload); False if there was none."""
        path = self.vhost_path(site)
        with self._locked():
            if not path.exists():
                return False
            self._change(job, path, None)
        return True

    def current(self, site: str) -> bytes | None:
        try:
            return self.vhost_path(site).read_bytes()
        except FileNotFoundError:
            return None

    def restore(self, job: Job, site: str, content: bytes | None) -> None:
        """Put a vhost back as it was (``None``: no vhost), then test and reload."""
        with self._locked():
            self._change(job, self.vhost_path(site), content)

    def _change(self, job: Job, path: Path, content: bytes | None) -> None:
        old = path.read_bytes() if path.exists() else None
        if old == content and content is not None:
            self.apply(job)  # unchanged: still make sure nginx serves it
            return
        self._put(path, content)
        try:
            self.apply(job)
        except OperationFailed:
            self._put(path, old)
            raise

    @staticmethod
    def _put(path: Path, content: bytes | None) -> None:
        if content is None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        else:
            write_atomic(path, content, mode=0o644)

    def apply(self, job: Job) -> None:
        """``nginx -t``, then the reload; a warning (nothing run) without nginx."""
        binary = self.binary()
        if binary is None:
            job.warn(f"no nginx program on {self.server.display_name} (nginx_binary, PATH, "
                     f"{DEFAULT_BINARY}): the vhost is written but neither tested nor "
                     "reloaded")
            return
        self.test(job, binary)
        job.run(self.reload_argv(binary), what="reloading nginx")
        job.say(f"nginx reloaded ({self.vhost_dir})")

    def test(self, job: Job, binary: str | None = None) -> str:
        binary = binary or self.binary()
        if binary is None:
            raise OperationFailed("no nginx program to test the configuration with")
        ran = job.run([binary, "-t", *self._conf_args()], what="nginx -t", check=False)
        if ran.code != 0:
            emerg = [ln for ln in ran.output.splitlines() if "[emerg]" in ln]
            raise OperationFailed("nginx -t: the configuration is refused: "
                                  + (emerg[-1] if emerg else ran.output.strip()[-300:]))
        return ran.output.strip().splitlines()[-1] if ran.output.strip() else "ok"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.paths.ensure_home()
        self.vhost_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.config_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _index_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise InvalidInput(f"index file name {name!r} must be letters, digits, '.', '_', '-'")
    return name
