"""nginx: one vhost file per site, tested with ``nginx -t``, then a reload.

The vhosts live in ``CONFIG/nginx/vhost.d/SITE.conf`` (CONFIG: the server's
``config_path``, else ``HOME/config/SERVER``); the server's nginx.conf includes them with::

    include CONFIG/nginx/vhost.d/*.conf;

Every change (write or remove) holds ``CONFIG/nginx/.lock`` through the write, the
``nginx -t`` and the reload, so two tasks never test each other's half-made change. When
the test or the reload fails, the folder is put back as it was and the task fails.
When there is no nginx program at all, the vhost is written but neither tested nor
reloaded, and the task ends in warning.

A warning of ``nginx -t`` that the change brought (``conflicting server name ... ignored``,
say: nginx would serve that name from another site) is an error, like a refusal: the
warnings of the configuration as it was are read first, and only new ones count.

A change ends when nginx serves it, not when ``nginx -s reload`` returns (it returns
before the master has even read the new files). Beside the vhosts lies
``_hostctl-probe.conf`` (no context name starts with ``_``): a server block for the host
name ``hHASH.hostctl-probe.invalid`` (HASH of the vhost folder) on the sites' own listen
addresses, which answers ``/.hostctl-generation`` with a token new at each change and the
answering worker's pid.
After the reload the task asks for it (with a bound, ``RELOAD_WAIT``) until the new token
comes back: a worker of the new configuration answered. nginx keeps its old workers
accepting for a moment after starting the new ones, so the task then waits until every
worker of the master (the answering worker's parent) that started before the reload has
exited or says, in its process title, that it is shutting down, which nginx sets once the
worker has closed its listening sockets. Both are read from /proc, which any user may read
of nginx's processes (root's included). This works whatever reloads nginx (the default
``nginx -s reload`` or the server's ``http_restart_cmd``); a configuration that never
answers (nginx.conf lacking the ``include`` line) fails the task with that reason.

Some refusals only the running master can see: ``nginx -t`` binds no socket, so a listen
address another program holds passes it, and on the reload the master logs ``[emerg]
bind() ... failed`` and goes on serving the old configuration. So while it waits the task
also reads nginx's error log (:class:`MasterLog`) from where it ended before the reload:
an error, or a warning the configuration did not have before, that the master logs while
it reads the new configuration fails the task at once with that line. Its pid (the pid
file) tells its lines from the workers', which log requests' troubles into the same file.
A change that fails once nginx was signalled is taken out again (the vhost and the
probe file as they were) and nginx reloaded once more, so that it serves the folder as it
was and not a change the task reported as failed.

When the reload fails because no nginx runs (nothing accepts on the probe's address, and
the server has no ``http_restart_cmd`` of its own), nginx is started (``nginx [-c CONF]``,
which must daemonize itself, as nginx does by default) and the task says so.

Everything written into a vhost comes from validated values: host names (uri,
aliases), listen addresses checked by :mod:`ipaddress`, ports, and paths and URLs free of
the characters nginx would read as syntax or variables.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import ipaddress
import os
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hostctl.contexts.schema import URL_FORM
from hostctl.contexts.store import Context
from hostctl.errors import InvalidInput, OperationFailed
from hostctl.files import flocked, write_atomic
from hostctl.paths import Paths
from hostctl.provision import layout
from hostctl.provision.job import Job

_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
#: what nginx would read as the end of a quoted string, an escape or a variable
_UNSAFE_PATH = re.compile(r'["\\$\x00-\x1f\x7f]')
DEFAULT_BINARY = "/usr/sbin/nginx"
PROBE_HOST = "hostctl-probe.invalid"  # .invalid: never a real site's name (RFC 2606)
PROBE_PATH = "/.hostctl-generation"
PROBE_FILE = "_hostctl-probe.conf"  # '_' starts no context name: never a site's vhost
RELOAD_WAIT = 10.0  # seconds nginx has to serve a change
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


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
    php_socket: str = ""  # the site's PHP-FPM socket ("" : a static site)
    front_controller: str = ""  # PHP: what serves a request for no file
    deny: tuple[str, ...] = ()  # file name patterns never served
    no_php: tuple[str, ...] = ()  # folders under the docroot (URL paths) that run no PHP
    auth_file: str = ""  # basic authentication: the user file ("" : none)
    acme_root: str = ""  # serves /.well-known/acme-challenge/ from here ("" : none)
    tls_cert: str = ""  # HTTPS: the certificate chain and its key ("" : HTTP only)
    tls_key: str = ""


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
        self._reloaded = False  # whether the change under way has signalled nginx yet

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
        port = int(str(self.server.get("http_port") or 80))
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
        """The site's vhost file: the operator's template (``HOME/templates/
        nginx-vhost.conf``) if there is one, else the built-in one, filled in."""
        return fill_template(self.template(), self.parts(vhost))

    def template(self) -> str:
        path = self.paths.home / "templates" / TEMPLATE
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return BUILTIN_TEMPLATE
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read the vhost template {path}: {exc}") from None

    def ssl_listens(self) -> list[str]:
        port = int(str(self.server.get("http_ssl_port") or 443))
        return [f"{spec.rpartition(':')[0]}:{port} ssl" if ":" in spec else f"{port} ssl"
                for spec in self.listens()]

    def parts(self, vhost: Vhost) -> dict[str, str]:
        """What a vhost template's placeholders stand for (every value checked: host
        names, addresses, paths without nginx syntax)."""
        uri = check_host(vhost.uri, "uri")
        aliases = [check_host(a, "alias") for a in vhost.aliases if a != uri]
        listens = [f"    listen {spec};" for spec in self.listens()]
        names = " ".join([uri] if vhost.redirection else [uri, *aliases])
        tls = bool(vhost.tls_cert)
        scheme = "https" if tls else "http"
        challenge: list[str] = []
        if vhost.acme_root:
            # the ACME CA's HTTP-01 check, on every name, before any redirect
            challenge = ["    location ^~ /.well-known/acme-challenge/ {",
                         f'        root "{check_path(vhost.acme_root, "the site folder")}";',
                         "        default_type text/plain;", "        auth_basic off;",
                         "        try_files $uri =404;", "    }"]
        ssl_lines: list[str] = []
        ssl_listens: list[str] = []
        if tls:
            ssl_listens = [f"    listen {spec};" for spec in self.ssl_listens()]
            ssl_lines = [f'    ssl_certificate "{check_path(vhost.tls_cert, "certificate")}";',
                         f'    ssl_certificate_key "{check_path(vhost.tls_key, "key")}";']
        redirects: list[str] = []
        to_uri = ["    location / {", f"        return 301 {scheme}://{uri}$request_uri;",
                  "    }"]
        if vhost.redirection and aliases:
            redirects = ["server {", *listens, f"    server_name {' '.join(aliases)};",
                         *challenge, *to_uri, "}", ""]
            if tls:
                redirects += ["server {", *ssl_listens,
                              f"    server_name {' '.join(aliases)};", *ssl_lines,
                              *to_uri, "}", ""]
        if vhost.enabled:
            body = self._serve(vhost)
        elif vhost.disable_url:
            if not URL_FORM.fullmatch(vhost.disable_url):
                raise InvalidInput(f"web_disable_url {vhost.disable_url!r} is not a plain "
                                   "http(s) URL")
            body = ["    location / {", f'        return 302 "{vhost.disable_url}";', "    }"]
        else:
            page = (f"<!doctype html><title>Site disabled</title><h1>Site disabled</h1>"
                    f"<p>{uri} is disabled.</p>")
            body = ["    default_type text/html;", "    location / {",
                    f"        return 503 '{page}';", "    }"]
        https: list[str] = []
        http_body = body
        if tls:
            http_body = ["    location / {", "        return 301 https://$host$request_uri;",
                         "    }"]
            https = ["", "server {", *ssl_listens, f"    server_name {names};", *ssl_lines,
                     *body, "}"]
        return {"site": vhost.site, "uri": uri, "aliases": " ".join(aliases),
                "server_names": names, "listen": "\n".join(listens),
                "redirects": "\n".join(redirects), "body": "\n".join(body),
                "challenge": "\n".join(challenge), "http_body": "\n".join(http_body),
                "https": "\n".join(https), "ssl_listen": "\n".join(ssl_listens),
                "ssl": "\n".join(ssl_lines),
                "docroot": check_path(vhost.docroot, "the document root"),
                "php_socket": vhost.php_socket,
                "enabled": "yes" if vhost.enabled else "no"}

    @staticmethod
    def _serve(vhost: Vhost) -> list[str]:
        """The lines of an enabled site's server block: static files, or PHP through its
        pool; basic authentication; what is never served."""
        docroot = check_path(vhost.docroot, "the document root")
        index = " ".join(_index_name(i) for i in vhost.index) or "index.html"
        lines = [f'    root "{docroot}";', f"    index {index};"]
        if vhost.auth_file:
            lines += ['    auth_basic "Restricted";',
                      f'    auth_basic_user_file "{check_path(vhost.auth_file, "auth")}";']
        # dot files (.htpasswd, .htaccess, .git, .env) are never served
        lines += ["    location ~ /\\.(?!well-known/) {", "        deny all;", "    }"]
        if not vhost.php_socket:
            return lines + ["    location / {", "        try_files $uri $uri/ =404;", "    }"]
        socket = check_path(vhost.php_socket, "the PHP-FPM socket")
        # nor what the manifest denies
        for pattern in vhost.deny:
            lines += [f'    location ~* "(^|/){_glob_regex(pattern)}$" {{', "        deny all;",
                      "    }"]
        for folder in vhost.no_php:
            lines += [f'    location ~* "^{_glob_regex(folder)}/.*\\.php$" {{',
                      "        deny all;", "    }"]
        fallback = (f"/{_index_name(vhost.front_controller)}$is_args$args"
                    if vhost.front_controller else "=404")
        lines += ["    location / {", f"        try_files $uri $uri/ {fallback};", "    }",
                  "    location ~ \\.php$ {",
                  "        try_files $uri =404;",  # no script, no PHP (no path tricks)
                  f'        fastcgi_pass "unix:{socket}";',
                  *(f"        fastcgi_param {k} {v};" for k, v in _FASTCGI_PARAMS),
                  "    }"]
        return lines

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
        probe = self.vhost_dir / PROBE_FILE
        old_probe = probe.read_bytes() if probe.exists() else None
        known = self.warnings(job)  # the configuration's own warnings, before the change
        if old == content and content is not None:
            self.apply(job, known)  # unchanged: still make sure nginx serves it
            return
        self._put(path, content)
        self._reloaded = False
        try:
            self.apply(job, known)
        except OperationFailed:
            # the folder exactly as it was, the probe's old token included; nginx was
            # signalled already, so it may serve the change: it must read the old again
            self._put(path, old)
            self._put(probe, old_probe)
            if self._reloaded:
                self._reload_back(job, old_probe)
            raise

    def _reload_back(self, job: Job, old_probe: bytes | None) -> None:
        """Reload nginx after a failed change was taken out again, and wait (bounded)
        until it serves the folder as it was; a failure here is a warning, the change's
        own failure stays the task's reason."""
        binary = self.binary()
        if binary is None:
            return
        since = _boot_ticks()
        ran = job.run(self.reload_argv(binary), what="reloading nginx", check=False)
        token = _probe_token(old_probe)
        try:
            if ran.code != 0:
                raise OperationFailed(f"exit status {ran.code}")
            if token:
                self._wait_served(token, since)
        except OperationFailed as exc:
            job.warn(f"the change was taken out again, but nginx may not serve the folder "
                     f"as it was: {exc}")

    @staticmethod
    def _put(path: Path, content: bytes | None) -> None:
        if content is None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        else:
            write_atomic(path, content, mode=0o644)

    def apply(self, job: Job, known: frozenset[str] = frozenset()) -> None:
        """``nginx -t`` (a warning not in ``known`` is an error), the reload, and the wait
        until nginx serves the result, failing on what the master logs against the reload;
        a warning (nothing run) without nginx."""
        binary = self.binary()
        if binary is None:
            job.warn(f"no nginx program on {self.server.display_name} (nginx_binary, PATH, "
                     f"{DEFAULT_BINARY}): the vhost is written but neither tested nor "
                     "reloaded")
            return
        token = secrets.token_hex(8)
        self._put(self.vhost_dir / PROBE_FILE, self._probe_conf(token).encode())
        new = [w for w in self._test(job, binary)[1] if w not in known]
        if new:
            raise OperationFailed(f"nginx -t warns: {new[0]} (the change is not applied)")
        log = MasterLog.of(job, binary, self._conf_args())
        since = _boot_ticks()
        argv = self.reload_argv(binary)
        self._reloaded = True
        ran = job.run(argv, what="reloading nginx", check=False)
        if ran.code != 0:
            if self.server.get("http_restart_cmd") or self._probe_answer() != "refused":
                last = ran.output.strip().splitlines()[-1:] or [""]
                raise OperationFailed(f"reloading nginx ({argv[0]}) exited with status "
                                      f"{ran.code}: {last[0]}")
            job.run([binary, *self._conf_args()], what="starting nginx (none was running)")
            job.say(f"nginx was not running: started it ({binary})")
        self._wait_served(token, since, log, known)
        job.say(f"nginx serves the change ({self.vhost_dir})")

    def warnings(self, job: Job) -> frozenset[str]:
        """The warnings ``nginx -t`` gives for the configuration as it is now."""
        binary = self.binary()
        return frozenset(self._test(job, binary)[1]) if binary else frozenset()

    def test(self, job: Job, binary: str | None = None) -> str:
        binary = binary or self.binary()
        if binary is None:
            raise OperationFailed("no nginx program to test the configuration with")
        return self._test(job, binary)[0]

    def _test(self, job: Job, binary: str) -> tuple[str, list[str]]:
        """``nginx -t``: its last line and its warnings; OperationFailed if refused."""
        ran = job.run([binary, "-t", *self._conf_args()], what="nginx -t", check=False)
        lines = ran.output.strip().splitlines()
        if ran.code != 0:
            emerg = [ln for ln in lines if "[emerg]" in ln]
            raise OperationFailed("nginx -t: the configuration is refused: "
                                  + (emerg[-1] if emerg else ran.output.strip()[-300:]))
        # "nginx: [warn] PID#TID: text": the pid differs at every run, the text does not
        warns = [re.sub(r"^\d+#\d+: ", "", ln.split("[warn] ", 1)[1].strip())
                 for ln in lines if "[warn] " in ln]
        return (lines[-1] if lines else "ok"), warns

    # -- served, not only reloaded ----------------------------------------------------

    @property
    def probe_host(self) -> str:
        """The probe's host name: one per vhost folder, since one nginx may include the
        folders of several server contexts."""
        digest = hashlib.sha256(os.fsencode(self.vhost_dir)).hexdigest()[:16]
        return f"h{digest}.{PROBE_HOST}"

    def _probe_conf(self, token: str) -> str:
        listens = "\n".join(f"    listen {spec};" for spec in self.listens())
        return (f"# written by hostctl: tells which configuration nginx serves\n"
                f"server {{\n{listens}\n    server_name {self.probe_host};\n"
                f"    access_log off;\n    default_type text/plain;\n"
                f"    location = {PROBE_PATH} {{ return 200 \"{token} $pid\\n\"; }}\n"
                f"    location / {{ return 404; }}\n}}\n")

    def _probe_address(self) -> tuple[str, int]:
        spec = self.listens()[0]
        host, _, port = spec.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if host in ("0.0.0.0", "*"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, int(port)

    def _probe_answer(self) -> str:
        """What the probe answers now ("TOKEN PID"), or "refused" when nothing listens,
        or a short description of another answer."""
        host, port = self._probe_address()
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", PROBE_PATH, headers={"Host": self.probe_host,
                                                     "Connection": "close"})
            res = conn.getresponse()
            body = res.read(200).decode("ascii", "replace").strip()
            return body if res.status == 200 else f"status {res.status}"
        except OSError as exc:
            return "refused" if exc.errno == errno.ECONNREFUSED else (
                exc.strerror or str(exc))
        except http.client.HTTPException as exc:
            return f"not HTTP ({type(exc).__name__})"
        finally:
            conn.close()

    def _wait_served(self, token: str, since: int, log: MasterLog | None = None,
                     known: frozenset[str] = frozenset()) -> None:
        """Until a worker of the configuration with ``token`` answers and no worker that
        started before ``since`` (boot ticks) still accepts; OperationFailed after
        RELOAD_WAIT seconds, or at once when nginx's master logs an error or a new
        warning (one not in ``known``) after the reload."""
        deadline = time.monotonic() + RELOAD_WAIT
        answer, delay = "", 0.002
        while True:
            answer = self._probe_answer()
            word, _, pid = answer.partition(" ")
            served = False
            if word == token:
                master = _ppid(int(pid)) if pid.isdigit() else None
                served = master is None or not _old_workers(master, since)
            # read after the probe: a worker of the new configuration answers only once
            # the master has read it all, so what it logged about it is in the log by now
            complaint = log.complaint(known) if log is not None else None
            if complaint:
                raise OperationFailed(f"nginx logs against the reload: {complaint} ("
                                      f"{log.path if log else ''})")
            if served:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        host, port = self._probe_address()
        raise OperationFailed(
            f"nginx does not serve the change after {RELOAD_WAIT:g} s (http://{host}:{port}"
            f"{PROBE_PATH} for {self.probe_host} answered: {answer or 'nothing'}); does its "
            f"nginx.conf have `{self.include_line()}` in its http block?")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.paths.ensure_home()
        self.vhost_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        with flocked(self.config_dir / ".lock"):
            yield


_LOG_LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\] (\d+)#\d+: (.*)")
_COMPLAINTS = frozenset({"warn", "error", "crit", "alert", "emerg"})
_LOG_READ = 1 << 20  # bytes of the error log read at a time: a reload writes a few lines


@dataclass
class MasterLog:
    """nginx's error log, read on from where it ended before the reload.

    On a reload the master logs ``reconfiguring``, then what it finds wrong while it reads
    the new configuration (``[emerg] bind() to ... failed``: it keeps serving the old one;
    ``[warn]``: it serves the new one all the same), then ``start worker processes`` once
    it serves it. Only the master's own lines in that window count: workers log requests'
    troubles into the same file.
    """

    path: Path
    pid_file: Path | None
    offset: int
    window: bool = False

    @classmethod
    def of(cls, job: Job, binary: str, conf_args: list[str]) -> MasterLog | None:
        """The master's error log as the main configuration file names it (else as nginx
        was built), or None (said in the task's log) when it cannot be read."""
        built: dict[str, str] = {}

        def build(option: str) -> str:
            if not built:
                ran = job.run([binary, "-V"], what="nginx -V", check=False)
                built.update(re.findall(r"--([a-z-]+)=(\S+)", ran.output))
                built.setdefault("-", "")
            return built.get(option, "")

        conf = conf_args[1] if conf_args else build("conf-path")
        try:
            top = _top_level(Path(conf).read_text(errors="replace")) if conf else {}
        except OSError:
            top = {}
        prefix = Path(build("prefix") or "/") if conf else Path("/")

        def place(value: str) -> Path:
            return Path(value) if value.startswith("/") else prefix / value

        pid = (top.get("pid") or [build("pid-path")])[0]
        logs = top.get("error_log") or [build("error-log-path")]
        files = [a for a in logs if a and a != "stderr" and not a.startswith(("syslog:",
                                                                               "memory:"))]
        if not files:
            job.say("nginx's master logs to no file (error_log): only the probe tells "
                    "whether a reload took")
            return None
        path = place(files[0])
        try:
            with open(path, "rb") as f:
                offset = f.seek(0, os.SEEK_END)
        except OSError as exc:
            job.say(f"nginx's error log {path} cannot be read ({exc.strerror}): only the "
                    "probe tells whether a reload took")
            return None
        return cls(path, place(pid) if pid else None, offset)

    def master(self) -> int | None:
        try:
            text = self.pid_file.read_text().strip() if self.pid_file else ""
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def complaint(self, known: frozenset[str]) -> str | None:
        """The first error or new warning the master logged about a reload since the last
        call, as ``[level] text``; None if none."""
        try:
            with open(self.path, "rb") as f:
                if f.seek(0, os.SEEK_END) < self.offset:  # rotated meanwhile
                    self.offset = 0
                f.seek(self.offset)
                data = f.read(_LOG_READ)
        except OSError:
            return None
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += end
        master = self.master()
        for raw in data[:end].decode("utf-8", "replace").splitlines():
            line = _LOG_LINE.match(raw)
            if not line or (master is not None and int(line[2]) != master):
                continue
            level, text = line[1], line[3].strip()
            if text == "reconfiguring":
                self.window = True
            elif text.startswith("start worker processes"):
                self.window = False
            elif self.window and level in _COMPLAINTS and not (level == "warn"
                                                               and text in known):
                return f"[{level}] {text}"
        return None


def _top_level(text: str) -> dict[str, list[str]]:
    """The first argument of each directive outside any block of an nginx configuration
    file (``pid``, ``error_log``), in order; its includes are not followed."""
    found: dict[str, list[str]] = {}
    depth, words = 0, list[str]()
    for token in re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{};]'
                            r'|[^\s{};#"\']+', text):
        if token.startswith("#"):
            continue
        if token == "{":
            depth, words = depth + 1, []
        elif token == "}":
            depth, words = max(depth - 1, 0), []
        elif token == ";":
            if depth == 0 and len(words) > 1:
                found.setdefault(words[0], []).append(words[1])
            words = []
        else:
            words.append(token[1:-1] if token[:1] in "\"'" and len(token) > 1 else token)
    return found


def _boot_ticks() -> int:
    """Now, in the unit of a process's start time in /proc/PID/stat."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _TICK_NS


def _probe_token(conf: bytes | None) -> str | None:
    """The token a probe file's text answers with."""
    found = re.search(rb'return 200 "([0-9a-f]+) ', conf or b"")
    return found[1].decode() if found else None


def _proc_stat(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split()


def _ppid(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def _old_workers(master: int, since: int) -> list[int]:
    """Workers of ``master`` started before ``since`` (boot ticks) that still accept
    connections (their title does not say they are shutting down)."""
    old = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _proc_stat(entry)
        if not fields or len(fields) < 20 or fields[1] != str(master).encode():
            continue
        if int(fields[19]) >= since:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read()
        except OSError:
            continue
        if b"shutting down" not in title and b"worker process" in title:
            old.append(int(entry))
    return old


#: what a PHP script learns of its request (Debian's fastcgi_params, and HTTP_PROXY
#: emptied: a request's "Proxy:" header must not become the script's proxy)
_FASTCGI_PARAMS = (
    ("SCRIPT_FILENAME", "$document_root$fastcgi_script_name"),
    ("QUERY_STRING", "$query_string"), ("REQUEST_METHOD", "$request_method"),
    ("CONTENT_TYPE", "$content_type"), ("CONTENT_LENGTH", "$content_length"),
    ("SCRIPT_NAME", "$fastcgi_script_name"), ("REQUEST_URI", "$request_uri"),
    ("DOCUMENT_URI", "$document_uri"), ("DOCUMENT_ROOT", "$document_root"),
    ("SERVER_PROTOCOL", "$server_protocol"), ("REQUEST_SCHEME", "$scheme"),
    ("HTTPS", "$https"), ("GATEWAY_INTERFACE", "CGI/1.1"),
    ("SERVER_SOFTWARE", "nginx"), ("REMOTE_ADDR", "$remote_addr"),
    ("REMOTE_PORT", "$remote_port"), ("SERVER_ADDR", "$server_addr"),
    ("SERVER_PORT", "$server_port"), ("SERVER_NAME", "$host"),
    ("REDIRECT_STATUS", "200"), ("HTTP_PROXY", '""'),
)


def _glob_regex(pattern: str) -> str:
    """A manifest's file name pattern or folder ('*' any characters but '/') as an nginx
    regular expression; anything but letters, digits, '.', '_', '-', '/', '*' refused."""
    if not re.fullmatch(r"[A-Za-z0-9._*/-]+", pattern):
        raise InvalidInput(f"{pattern!r}: only letters, digits, '.', '_', '-', '/' and '*'")
    return "".join("[^/]*" if ch == "*" else re.escape(ch) if ch in "." else ch
                   for ch in pattern).replace("\\", "\\\\")


TEMPLATE = "nginx-vhost.conf"
#: the built-in vhost template; an operator's HOME/templates/nginx-vhost.conf takes its
#: place (the same placeholders; nginx -t checks the result before it is served)
BUILTIN_TEMPLATE = """\
# @{{ site }}: written by hostctl; a verify of the site rewrites it

{{ redirects }}
server {
{{ listen }}
    server_name {{ server_names }};
{{ challenge }}
{{ http_body }}
}
{{ https }}
"""
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def fill_template(template: str, parts: dict[str, str]) -> str:
    """``{{ name }}`` replaced by its part; a line that holds only a placeholder whose part
    is empty goes. An unknown placeholder is refused, naming the ones there are."""
    out: list[str] = []
    for line in template.splitlines():
        names = _PLACEHOLDER.findall(line)
        for name in names:
            if name not in parts:
                raise InvalidInput(f"the vhost template: unknown placeholder {{{{ {name} }}}}"
                                   f" (known: {', '.join(sorted(parts))})")
        if names and not _PLACEHOLDER.sub("", line).strip() and \
                not "".join(parts[n] for n in names):
            continue
        out.append(_PLACEHOLDER.sub(lambda m: parts[m.group(1)], line))
    return "\n".join(out) + "\n"


def _index_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise InvalidInput(f"index file name {name!r} must be letters, digits, '.', '_', '-'")
    return name
