"""PHP through PHP-FPM: each PHP site's own UNIX user, settings file and pool.

A server with ``php_service_type = php-fpm`` runs the PHP of its PHP platforms' sites. All
that needs root goes through the privileged helper (provision/privileged.py), run as
``privileged_command`` (unset: ``hostctl privileged``, through ``sudo -n`` unless the back
end is root) with the server's ``privileged_settings`` file; what a site gets:

- its own UNIX user and group (``user_prefix`` and the site's uri, ``-2``... on a
  collision), which the web server's user joins;
- its folder ``ROOT/sites/URI`` in its group, mode 0750: its PHP and the web server may
  enter it, no other site's PHP may; the manifest's writable folders its user's;
- its settings file, its user's alone (0400), written by the helper from stdin;
- its pool: PHP runs as its user, on a socket only the web server's user may connect to,
  with its settings in the pool's environment if the manifest asks. An operator's
  ``HOME/templates/php-fpm-pool.conf`` adds directives to every pool (placeholders
  ``{uri}``, ``{site_path}``, ``{root}``, ``{user}``); the helper takes only the
  directives a pool may set, and php-fpm must accept the result.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path

from hostctl.contexts.store import Context
from hostctl.errors import HostctlError, InvalidInput, OperationFailed
from hostctl.paths import Paths
from hostctl.process import hostctl_command
from hostctl.provision import privileged
from hostctl.provision.job import Job

log = logging.getLogger("hostctl")

TEMPLATE = "php-fpm-pool.conf"
_SAFE_VALUE = re.compile(r'[^"\\$\x00-\x1f\x7f]*')


class PhpFpm:
    type = "php-fpm"

    def __init__(self, server: Context, paths: Paths) -> None:
        self.server = server
        self.paths = paths
        raw = server.get("privileged_settings")
        self.settings_path = Path(raw if isinstance(raw, str) and raw
                                  else privileged.DEFAULT_SETTINGS)
        self._settings: privileged.Settings | None = None

    @property
    def settings(self) -> privileged.Settings:
        if self._settings is None:
            self._settings = privileged.load(self.settings_path, trusted=False)
        return self._settings

    def socket(self, user: str) -> Path:
        return self.settings.socket(user)

    # -- the helper -------------------------------------------------------------------

    def helper_argv(self) -> list[str]:
        import shlex

        configured = str(self.server.get("privileged_command") or "")
        if configured.strip():
            return shlex.split(configured)
        if os.geteuid() == 0:  # (-P: nothing of the working folder is imported as root)
            return hostctl_command("privileged")
        return through_sudo(self.settings_path)

    def call(self, job: Job, action: str, *args: str, stdin: str | None = None) -> str:
        ran = job.run([*self.helper_argv(), str(self.settings_path), action, *args],
                      what=f"the privileged helper ({action})", stdin=stdin)
        return ran.output.strip()

    # -- the site's user --------------------------------------------------------------

    def new_user(self, uri: str, avoid: set[str] | None = None) -> str:
        """A free site user name for ``uri``: the prefix, its letters, digits and '-'."""
        prefix = self.settings.user_prefix
        base = re.sub(r"[^a-z0-9]+", "-", uri.lower().removeprefix("www.")).strip("-")[:20]
        base = base.rstrip("-") or "site"
        name, n = prefix + base, 1
        while name in (avoid or set()) or user_exists(name):
            n += 1
            name = f"{prefix}{base}-{n}"
        return self.settings.check_user(name)

    def remove_user(self, job: Job, name: str) -> None:
        job.say(self.call(job, "user-del", name))

    def take(self, job: Job, name: str, folder: Path) -> None:
        """Everything of the site's user under ``folder`` back to the back end (before
        the back end moves or removes it); nothing to do if the user is gone."""
        if user_exists(name):
            self.call(job, "take", name, str(folder))

    # -- the pool ---------------------------------------------------------------------

    def pool_body(self, env: Mapping[str, str], values: Mapping[str, str]) -> str:
        """A pool's directives as the back end gives them to the helper: its environment,
        then the operator's template."""
        lines = []
        for key, value in env.items():
            if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", key) or not _SAFE_VALUE.fullmatch(value):
                raise InvalidInput(f"the pool's environment: {key} holds a quote, a "
                                   "backslash, a '$' or a control character")
            lines.append(f'env[{key}] = "{value}"')
        lines += self.template(values)
        return "\n".join(lines) + "\n"

    def batch(self, job: Job, steps: list[tuple[str, list[str], str]]) -> list[str]:
        """Several helper actions in one run (one sudo, one interpreter start): what each
        did; :class:`StepsFailed` (with how many were done) when one fails."""
        payload = json.dumps([{"action": action, "args": args, "stdin": stdin}
                              for action, args, stdin in steps])
        ran = job.run([*self.helper_argv(), str(self.settings_path), "batch"],
                      what="the privileged helper", stdin=payload, check=False)
        doc = next((json.loads(line) for line in ran.output.splitlines()
                    if line.startswith("{")), None)
        if not isinstance(doc, dict) or not isinstance(doc.get("done"), list):
            last = next((ln for ln in reversed(ran.output.splitlines()) if ln.strip()), "")
            raise StepsFailed([], f"the privileged helper exited with status {ran.code}: "
                                  f"{last.strip()}")
        if ran.code != 0 or "error" in doc:
            raise StepsFailed(doc["done"], f"the privileged helper: {doc.get('error') or ''}")
        return [str(line) for line in doc["done"]]

    def template(self, values: Mapping[str, str]) -> list[str]:
        """The operator's pool directives, placeholders filled in ([] without one)."""
        path = self.paths.home / "templates" / TEMPLATE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read the pool template {path}: {exc}") from None

        def fill(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in values:
                raise InvalidInput(f"{path}: unknown placeholder {{{key}}} (known: uri, "
                                   "site_path, root, user)")
            return values[key]

        return [re.sub(r"\{([a-z_]+)\}", fill, line) for line in text.splitlines()]

    def remove_pool(self, job: Job, name: str) -> None:
        self.call(job, "pool-remove", name)

    # -- doctor -----------------------------------------------------------------------

    def problems(self, helper_code: Iterable[Path] = ()) -> list[tuple[Path, str]]:
        """What keeps the helper from working, or from being safe: its settings file, the
        code sudo runs as root (it and its folders must be root's alone: whoever may
        change it is root: the interpreter, hostctl's modules loaded here, and
        ``helper_code``, the files of the command line that runs the helper), and, for a
        back end that is not root, the sudoers line."""
        found: list[tuple[Path, str]] = []
        try:
            privileged.load(self.settings_path)
        except (InvalidInput, HostctlError) as exc:
            found.append((self.settings_path, exc.message))
            return found
        argv = self.helper_argv()
        code = {*_interpreter_files(), *helper_code}
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if (name == "hostctl" or name.startswith("hostctl.")) and file:
                code.add(Path(file))
        program = next((a for a in argv if a.startswith("/") and "hostctl" in a), None)
        if program:
            code.add(Path(program))
        for path in sorted(code):
            try:
                privileged.check_root_only(Path(os.path.realpath(path)))
            except HostctlError as exc:
                found.append((path, f"the privileged helper runs this as root: "
                                    f"{exc.message}"))
        if os.geteuid() != 0 and argv[:1] == ["sudo"]:
            found += self._sudo_problems(argv)
        return found

    def _sudo_problems(self, argv: list[str]) -> list[tuple[Path, str]]:
        """The sudoers line: allowed as the helper is run, and no line of an earlier
        hostctl (its program, whose interpreter takes in the environment sudo keeps: a
        kept HOME's ~/.local, PYTHONPATH) left that the back end could run instead."""
        where = Path("/etc/sudoers.d")
        user = pwd.getpwuid(os.geteuid()).pw_name
        try:
            line = privileged.sudoers_line(self.settings_path, user, sys.executable)
        except InvalidInput as exc:
            return [(where, exc.message)]
        earlier = _earlier_argv()
        if earlier is not None and earlier != argv and \
                _sudo_allows(earlier, self.settings_path):
            return [(where, f"sudo lets {user} run the privileged helper as {earlier[2]}, "
                            "whose interpreter takes in the environment sudo keeps (a kept "
                            "HOME's ~/.local, PYTHONPATH): remove that sudoers line"
                            + ("" if argv != earlier and _sudo_allows(argv, self.settings_path)
                               else f" and add this one: {line}"))]
        if argv == earlier:
            return [(where, f"sudo lets {user} run the privileged helper only as "
                            f"{earlier[2]}, whose interpreter takes in the environment sudo "
                            "keeps (a kept HOME's ~/.local, PYTHONPATH): replace that "
                            f"sudoers line with: {line}")]
        if not _sudo_allows(argv, self.settings_path):
            return [(where, f"sudo does not let {user} run the privileged helper; add this "
                            f"line (visudo -f /etc/sudoers.d/hostctl): {line}")]
        return []


#: the helper's argv that sudo allows, per settings file, as this process found it
_SUDO_ALLOWS: dict[str, list[str]] = {}


def through_sudo(settings_path: Path) -> list[str]:
    """The helper's argv through sudo: :func:`privileged.sudo_argv`, as the sudoers line
    of ``hostctl privileged --sudoers`` allows it. Where sudo allows only the form of an
    earlier hostctl (its program, whose interpreter takes in the environment sudo keeps),
    that one, with a warning, until the line is replaced (``doctor`` names it). Asked of
    sudo (``sudo -n -l``) once per process and settings file."""
    key = str(settings_path)
    found = _SUDO_ALLOWS.get(key)
    if found is not None:
        return found
    isolated = privileged.sudo_argv(sys.executable)
    if _sudo_allows(isolated, settings_path):
        _SUDO_ALLOWS[key] = isolated
        return isolated
    earlier = _earlier_argv()
    if earlier is not None:
        if _sudo_allows(earlier, settings_path):
            log.warning("sudo lets the privileged helper run only as %s, which takes in "
                        "the environment sudo keeps: replace its sudoers line with the "
                        "one `hostctl privileged --sudoers %s` prints", earlier[2],
                        settings_path)
            _SUDO_ALLOWS[key] = earlier
            return earlier
    return isolated  # not allowed: sudo says so when it is run (and doctor, how to mend)


def _earlier_argv() -> list[str] | None:
    """The helper's argv as an earlier hostctl ran it through sudo (its program), if a
    hostctl program is on PATH."""
    program = shutil.which("hostctl")
    return None if program is None else ["sudo", "-n", os.path.realpath(program),
                                         "privileged"]


def _interpreter_files() -> set[Path]:
    """What of the interpreter a root process of it runs or reads first: the interpreter,
    the folder of each name on its way (a venv's link: swapped, it is another program),
    a venv's pyvenv.cfg (it says where the standard library is), the .pth files of its
    site-packages (site runs their import lines), and ``hostctl.__main__`` (``-m``)."""
    import importlib.util
    import site

    found: set[Path] = {Path(sys.executable)}
    hop = Path(sys.executable)
    with suppress(OSError):  # (what cannot be looked at is said by the check)
        for _ in range(40):  # (a loop of links ends here; realpath then fails the check)
            found.add(hop.parent)
            if not hop.is_symlink():
                break
            hop = hop.parent / os.readlink(hop)
    found.add(Path(os.path.realpath(sys.executable)))
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    with suppress(OSError):
        if cfg.exists():
            found.add(cfg)
    for folder in site.getsitepackages():
        with suppress(OSError):
            found.update(Path(folder).glob("*.pth"))
    spec = importlib.util.find_spec("hostctl.__main__")
    if spec is not None and spec.origin:
        found.add(Path(spec.origin))
    return found


def _sudo_allows(argv: list[str], settings_path: Path) -> bool:
    """Whether sudo lets this user run ``argv`` (``sudo [-n] ...``) on ``settings_path``."""
    import subprocess

    command = list(argv)
    if command[:1] == ["sudo"]:
        command = command[1:]
        while command[:1] == ["-n"]:
            command = command[1:]
    try:
        ran = subprocess.run(["sudo", "-n", "-l", *command, str(settings_path),
                              "user-add", "hostctl-probe"], capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ran.returncode == 0


class StepsFailed(OperationFailed):
    """A batch of helper actions stopped at one; ``done``: what the ones before it did."""

    def __init__(self, done: list[str], message: str) -> None:
        super().__init__(message)
        self.done = done


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def settings_text(fmt: str, values: Mapping[str, str]) -> str:
    """The settings file in its format: ``php`` (an array ``$hostctl``), ``json``, or
    ``env`` (``KEY="value"`` lines)."""
    if fmt == "json":
        return json.dumps(dict(values), indent=2) + "\n"
    if fmt == "env":
        for key, value in values.items():
            if not _SAFE_VALUE.fullmatch(value):
                raise InvalidInput(f"the settings: {key} cannot be written as KEY=\"value\"")
        return "".join(f'{k}="{v}"\n' for k, v in values.items())

    def quoted(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    body = "".join(f"  {quoted(k)} => {quoted(v)},\n" for k, v in values.items())
    return ("<?php\n// Written by hostctl for this site; a verify of the site writes it "
            "again.\n$hostctl = [\n" + body + "];\n")
