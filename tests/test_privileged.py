"""The privileged helper, as root and through real sudo from an unprivileged back-end
user: it does its few actions for the back end, and refuses everything else (settings
others could write, names that are not site users', paths outside the site roots or
through symbolic links, pool directives that would act as root), leaving things as they
were."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from asuser import Users, call_as, can_make_users, frontend_users, hostctl_as
from conftest import hostctl_exe
from provisionhelpers import (
    PgCluster,
    PhpFpm,
    make_php_platform,
    remove_site_users,
    secrets_of,
    site_users,
    start_php_fpm,
    start_postgres,
    world_readable_dir,
)

from hostctl.provision import privileged


@pytest.fixture(scope="module")
def www() -> Path:
    return world_readable_dir("hostctl-priv-www-")


@pytest.fixture(scope="module")
def fpm(www: Path) -> Iterator[PhpFpm]:
    server = start_php_fpm([www])
    prefix = privileged.load(server.settings).user_prefix
    yield server
    server.stop()
    remove_site_users(prefix)


def helper(settings: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hostctl", "privileged", str(settings),
                           *args], input=stdin, capture_output=True, text=True, timeout=60,
                          cwd="/")


def refused(settings: Path, *args: str, why: str, stdin: str = "") -> None:
    res = helper(settings, *args, stdin=stdin)
    assert res.returncode != 0, (args, res)
    assert why in res.stderr and len(res.stderr.strip().splitlines()) == 1, (args, res)


def test_actions_as_root_and_what_they_refuse(fpm: PhpFpm, www: Path) -> None:
    settings = fpm.settings
    prefix = privileged.load(settings).user_prefix
    user = prefix + "one"
    res = helper(settings, "user-add", user)
    assert res.returncode == 0, res
    entry = pwd.getpwnam(user)
    assert entry.pw_shell == "/usr/sbin/nologin" and entry.pw_dir == "/nonexistent"
    assert user in __import__("grp").getgrgid(entry.pw_gid).gr_mem or \
        "nobody" in __import__("grp").getgrgid(entry.pw_gid).gr_mem
    assert helper(settings, "user-add", user).returncode == 0  # again: the same

    # names: only the prefix's, never another user's
    refused(settings, "user-add", "root", why="is not a site user's name")
    refused(settings, "user-add", prefix + "Bad_Name", why="is not a site user's name")
    refused(settings, "user-del", "nobody", why="is not a site user's name")
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", prefix + "byhand"],
                   check=True, timeout=60)
    try:
        refused(settings, "user-del", prefix + "byhand", why="is not a hostctl site user")
        refused(settings, "user-add", prefix + "byhand", why="is not a hostctl site user")
    finally:
        subprocess.run(["userdel", prefix + "byhand"], timeout=60)

    site = www / "plat" / "sites" / "one.test"
    (site / "files").mkdir(parents=True)
    (site / "files" / "a.txt").write_text("upload")
    outside = www.parent / "hostctl-priv-outside"
    outside.mkdir(exist_ok=True)
    # paths: inside a site root, no '..', no symbolic link on the way
    refused(settings, "share", user, "/etc", why="is not inside a site root")
    refused(settings, "share", user, str(www), why="is not inside a site root")
    refused(settings, "share", user, f"{site}/../../../..", why="without '..'")
    (www / "plat" / "sites" / "link").symlink_to(outside)
    refused(settings, "share", user, str(www / "plat/sites/link"), why="is not a folder")
    assert stat.S_IMODE(outside.stat().st_mode) != 0o750
    refused(settings, "give", user, str(site / "files"), why="not inside a site folder shared")
    assert helper(settings, "share", user, str(site)).returncode == 0
    assert (stat.S_IMODE(site.stat().st_mode), site.stat().st_gid) == (0o750, entry.pw_gid)
    # a link inside a given folder is changed itself, never followed
    (site / "files" / "passwd").symlink_to("/etc/passwd")
    assert helper(settings, "give", user, str(site / "files")).returncode == 0
    assert os.stat("/etc/passwd").st_uid == 0
    assert os.lstat(site / "files" / "passwd").st_uid == entry.pw_uid
    assert (site / "files" / "a.txt").stat().st_uid == entry.pw_uid
    # the settings file: the site user's, 0400; a name that is no plain file name refused
    res = helper(settings, "settings", user, str(site / "settings.php"), stdin="<?php\n")
    assert res.returncode == 0, res
    st = (site / "settings.php").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (entry.pw_uid, 0o400)
    refused(settings, "settings", user, str(site / ".hidden"), why="is not a plain file name")
    refused(settings, "settings", user, str(outside / "x.php"), why="is not inside a site root")

    # pools: only directives a site may set, values that cannot become syntax
    pool = fpm.pool_dir / f"hostctl-{user}.conf"
    for body, why in (("user = root", "'user' is not a directive"),
                      ("include = /etc/php/x.conf", "'include' is not a directive"),
                      ("access.log = /etc/shadow", "'access.log' is not a directive"),
                      ("listen = /tmp/x.sock", "'listen' is not a directive"),
                      ("ping.response = x", "'ping.response' is not a directive"),
                      ('env[X] = "${HOME}"', "must be a plain word"),
                      ('php_admin_value[a] = "x" ; y', "must be a plain word"),
                      ("[other]", "is not a directive")):
        refused(settings, "pool-write", user, why=why, stdin=body + "\n")
        assert not pool.exists(), body
    assert helper(settings, "pool-write", user, stdin="env[GREETING] = hello\n").returncode == 0
    text = pool.read_text()
    assert stat.S_IMODE(pool.stat().st_mode) == 0o600 and f"user = {user}\n" in text
    token = privileged._token_of(pool.read_bytes())
    assert privileged.ping(fpm.socket_dir / f"{user}.sock") == token
    # php-fpm refuses it: the folder and what is served stay as they were
    refused(settings, "pool-write", user, why="php-fpm -t", stdin="pm = sometimes\n")
    assert pool.read_text() == text
    assert privileged.ping(fpm.socket_dir / f"{user}.sock") == token
    # a user is not removed while its pool runs; then both go
    refused(settings, "user-del", user, why="remove it first")
    assert helper(settings, "take", user, str(site)).returncode == 0
    assert all(p.lstat().st_uid == 0 for p in [site, *site.rglob("*")])
    assert helper(settings, "pool-remove", user).returncode == 0
    assert not (fpm.socket_dir / f"{user}.sock").exists()
    assert helper(settings, "user-del", user).returncode == 0
    assert user not in site_users(prefix)


def test_a_batch_runs_its_actions_in_order_and_stops_at_the_first_refused(
        fpm: PhpFpm, www: Path) -> None:
    import json

    settings = fpm.settings
    prefix = privileged.load(settings).user_prefix
    user = prefix + "batch"
    site = www / "plat" / "sites" / "batch.test"
    (site / "files").mkdir(parents=True)

    def batch(*steps: dict[str, object]) -> tuple[int, dict[str, object]]:
        res = helper(settings, "batch", stdin=json.dumps(list(steps)))
        return res.returncode, json.loads(res.stdout)

    code, doc = batch({"action": "user-add", "args": [user]},
                      {"action": "share", "args": [user, str(site)]},
                      {"action": "share", "args": [user, "/etc"]},
                      {"action": "give", "args": [user, str(site / "files")]})
    assert code == 2 and len(doc["done"]) == 2, doc  # type: ignore[arg-type]
    assert "step 3 (share)" in str(doc["error"]) and "not inside a site root" in \
        str(doc["error"])
    assert (site / "files").stat().st_uid == 0  # the step after the refused one: not run
    code, doc = batch({"action": "give", "args": [user, str(site / "files")]},
                      {"action": "settings", "args": [user, str(site / "s.php")],
                       "stdin": "<?php\n"})
    assert code == 0 and len(doc["done"]) == 2, doc  # type: ignore[arg-type]
    assert (site / "s.php").stat().st_mode & 0o777 == 0o400
    for bad in ("not json", "[]", json.dumps([{"action": "batch", "args": []}]),
                json.dumps([{"action": "user-add", "args": [user], "shell": "x"}])):
        res = helper(settings, "batch", stdin=bad)
        assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, (bad, res)
    assert helper(settings, "take", user, str(site)).returncode == 0
    assert helper(settings, "user-del", user).returncode == 0


def test_settings_others_could_write_are_refused(tmp_path: Path, www: Path) -> None:
    base = Path(world_readable_dir("hostctl-priv-settings-"))
    good = base / "privileged.toml"
    good.write_text(f'backend_user = "root"\nsite_roots = ["{www}"]\n')
    good.chmod(0o644)
    refused(good, "user-add", "root", why="is not a site user's name")  # trusted: read
    good.chmod(0o664)
    refused(good, "user-add", "hs-x", why="is not root's alone")
    good.chmod(0o644)
    base.chmod(0o777)
    refused(good, "user-add", "hs-x", why="is not root's alone")
    base.chmod(0o755)
    os.chown(good, 65534, -1)
    refused(good, "user-add", "hs-x", why="is not root's alone")
    # doctor says so for a server that names it
    from hostctl.cli.main import main

    home = tmp_path / "home"
    assert main(["--home", str(home), "provision-save", "@srv", "--context_type", "server",
                 "--php_service_type", "php-fpm", "--privileged_settings", str(good)]) == 0
    res = subprocess.run([hostctl_exe(), "--home", str(home), "doctor"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0 and f"{good}: @srv: {good} is not root's alone" in res.stdout, \
        res
    refused(Path("relative.toml"), "user-add", "hs-x", why="not an absolute path")


def test_the_helper_as_root_loads_nothing_of_the_working_folder(tmp_path: Path) -> None:
    """A back end that is root runs the helper with this interpreter (``-P``): a folder a
    site's user may write, where root happens to run hostctl, cannot put a ``hostctl``
    of its own in front of the real one. So does a cron line without a script."""
    if os.geteuid() != 0:
        pytest.skip("the helper runs as root")
    from hostctl.contexts.store import TomlStore
    from hostctl.paths import Paths
    from hostctl.provision.services.php import PhpFpm
    from hostctl.runners.crontab import hostctl_argv

    home = Paths(tmp_path / "home")
    home.ensure_home()
    server = TomlStore(home).save("@srv", {"php_service_type": "php-fpm"}, "server").context
    planted = world_readable_dir("hostctl-priv-cwd-")
    marker = planted / "ran"
    (planted / "hostctl").mkdir()
    (planted / "hostctl" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').write('planted')\n")
    (planted / "hostctl" / "__main__.py").write_text("")
    argv = PhpFpm(server, home).helper_argv()
    res = subprocess.run([*argv, "/nonexistent/privileged.toml", "user-add", "hs-x"],
                         capture_output=True, text=True, timeout=60, cwd=planted)
    assert not marker.exists(), argv
    assert res.returncode != 0 and "/nonexistent/privileged.toml" in res.stderr, res
    old_argv = sys.argv
    sys.argv = ["/x/__main__.py"]
    try:
        cron = hostctl_argv()
    finally:
        sys.argv = old_argv
    res = subprocess.run([*cron, "--version"], capture_output=True, text=True, timeout=60,
                         cwd=planted)
    assert not marker.exists() and res.returncode == 0, (cron, res)


# -- through sudo, from an unprivileged back end -----------------------------------------


def allow(sudoers: Path, text: str) -> None:
    """Install ``text`` as the sudoers file ``sudoers``, as visudo would accept it."""
    sudoers.write_text(text if text.endswith("\n") else text + "\n")
    sudoers.chmod(0o440)
    subprocess.run(["visudo", "-cf", str(sudoers)], check=True, capture_output=True,
                   timeout=60)


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    why = can_make_users()
    if why:
        pytest.skip(why)
    if not os.access("/usr/bin/sudo", os.X_OK):
        pytest.skip("sudo is not installed")
    with frontend_users(1) as made:
        yield made


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = start_postgres()
    yield cluster
    cluster.stop()


def test_an_unprivileged_back_end_through_sudo(users: Users, pg: PgCluster) -> None:
    backend = users.backend
    top = users.base / "be"
    top.mkdir(mode=0o711)
    www = top / "www"
    www.mkdir(mode=0o755)
    for folder in (top, www):
        os.chown(folder, backend.uid, backend.gid)
    fpm = start_php_fpm([www], backend_user=backend.name, prefix="hsu")
    prefix = privileged.load(fpm.settings).user_prefix
    sudoers = Path(f"/etc/sudoers.d/hostctl-test-{backend.name}")
    try:
        line = subprocess.run([sys.executable, "-m", "hostctl", "privileged", "--sudoers",
                               str(fpm.settings), backend.name], capture_output=True,
                              text=True, timeout=60, check=True).stdout
        assert line.strip() == (f"{backend.name} ALL=(root) NOPASSWD: {sys.executable} -I "
                                f"-m hostctl privileged {fpm.settings} *")
        allow(sudoers, line)
        home = top / "home"
        root = www / "plat"
        make_php_platform(root)
        for path in [root, *root.rglob("*")]:
            os.chown(path, backend.uid, backend.gid)

        def be(*argv: str) -> str:
            res = hostctl_as(backend, "--home", str(home), *argv, timeout=120)
            assert res.code == 0, (argv, res)
            return str(res.out)

        # the helper as the server's settings leave it: through sudo, as the line allows
        be("provision-save", "@srv", "--context_type", "server", "--http_service_type",
           "none", "--php_service_type", "php-fpm", "--privileged_settings",
           str(fpm.settings), *pg.server_fields())
        be("provision-save", "@plat", "--context_type", "platform", "--root", str(root),
           "--web_server", "@srv")
        be("provision-save", "@s.test", "--context_type", "site", "--platform", "@plat")
        be("provision-install", "@s.test")
        user = secrets_of(home, "@s.test")["unix_user"]
        assert user in site_users(prefix)
        site = root / "sites" / "s.test"
        st = (site / "settings.php").stat()
        assert (pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)) == (user, 0o400)
        assert site.stat().st_uid == backend.uid
        out = privileged.fastcgi_get(fpm.socket_dir / f"{user}.sock", "/whoami",
                                     script=str(root / "index.php"))
        assert out.split(b"\r\n\r\n", 1)[1] == f"{user}\n".encode()
        # the back end cannot read what it handed over
        res = hostctl_as(backend, "--home", str(home), "provision-verify", "@s.test")
        assert res.code == 0, res

        def sudo(*args: str, settings: Path = fpm.settings) -> tuple[int, str]:
            done = hostctl_as(backend, "privileged", "--sudoers", str(settings))
            assert done.code == 0
            argv = [*privileged.sudo_argv(sys.executable), str(settings), *args]
            proc = subprocess.run(["setpriv", f"--reuid={backend.uid}",
                                   f"--regid={backend.gid}", "--clear-groups", *argv],
                                  capture_output=True, text=True, timeout=60, cwd="/")
            return proc.returncode, proc.stderr

        # through sudo, the same refusals; other settings are not the sudoers line's
        assert sudo("share", user, "/etc")[0] == 2
        assert sudo("user-del", "root")[0] == 2
        assert sudo("user-add", prefix + "x", settings=Path("/tmp/other.toml"))[0] == 1
        assert os.stat("/etc").st_gid == 0

        # doctor, as the back end: the sudoers line is there, the code is root's alone
        res = hostctl_as(backend, "--home", str(home), "doctor")
        # (the test's interpreter may lie in a folder the back end cannot enter, which
        # doctor says it cannot check; a real back end runs hostctl from where it can)
        said = [ln for ln in res.out.splitlines() if "privileged" in ln
                and "Permission denied" not in ln]
        assert not said, res
        sudoers.unlink()
        res = hostctl_as(backend, "--home", str(home), "doctor")
        assert res.code != 0 and "sudo does not let" in res.out, res
        assert line.strip() in res.out, res
        allow(sudoers, line)

        be("provision-disable", "@s.test")
        be("provision-delete", "@s.test")
        assert user not in site_users(prefix)
        assert not site.exists()
    finally:
        sudoers.unlink(missing_ok=True)
        fpm.stop()
        remove_site_users(prefix)


def test_through_sudo_nothing_of_the_kept_environment_runs_as_root(
        users: Users, www: Path) -> None:
    """A sudoers that keeps PYTHONPATH (or HOME, and with it ~/.local) would let the back
    end's user put code before hostctl's in a Python run as root: the helper's sudo line
    runs the interpreter isolated (-I), where the hostctl program (an earlier hostctl's
    line), whose interpreter takes the environment in, runs the planted code. That
    earlier line still works, with a warning, and doctor names the line to put instead."""
    from hostctl.contexts.store import TomlStore
    from hostctl.paths import Paths
    from hostctl.provision.services import php

    backend = users.backend
    fpm = start_php_fpm([www], backend_user=backend.name, prefix="hse")
    settings = fpm.settings
    planted = world_readable_dir("hostctl-priv-planted-")
    marker = planted / "ran-as-root"
    (planted / "sitecustomize.py").write_text(
        f"import os\nif os.geteuid() == 0:\n    open({str(marker)!r}, 'w').write('x')\n")
    bindir = world_readable_dir("hostctl-priv-bin-")  # an earlier install's program
    shutil.copy(hostctl_exe(), bindir / "hostctl")
    (bindir / "hostctl").chmod(0o755)
    earlier = f"{bindir}/hostctl privileged {settings} *"
    sudoers = Path(f"/etc/sudoers.d/hostctl-test-env-{backend.name}")
    keep = f'Defaults:{backend.name} env_keep += "PYTHONPATH"\n'
    env = {"PYTHONPATH": str(planted), "PATH": f"{bindir}:/usr/bin:/bin"}

    def as_backend(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["setpriv", f"--reuid={backend.uid}", f"--regid={backend.gid}",
                               "--clear-groups", *argv, str(settings), "user-del",
                               privileged.load(settings).user_prefix + "nobody"],
                              capture_output=True, text=True, timeout=60, cwd="/",
                              env={**os.environ, **env})

    def chosen() -> list[str]:
        php._SUDO_ALLOWS.clear()
        os.environ.update(env)
        return php.through_sudo(settings)

    home = world_readable_dir("hostctl-priv-home-") / "home"
    home.mkdir()
    os.chown(home, backend.uid, backend.gid)
    try:
        allow(sudoers, keep + privileged.sudoers_line(settings, backend.name,
                                                      sys.executable))
        argv = call_as(backend, chosen)
        assert argv == privileged.sudo_argv(sys.executable)
        res = as_backend(argv)
        assert res.returncode == 0, res  # (no such user: nothing to delete)
        assert not marker.exists()

        allow(sudoers, keep + f"{backend.name} ALL=(root) NOPASSWD: {earlier}")
        argv = call_as(backend, chosen)
        assert argv == ["sudo", "-n", str(bindir / "hostctl"), "privileged"]
        res = as_backend(argv)
        assert res.returncode == 0, res
        assert marker.exists()  # what the isolated interpreter keeps out
        marker.unlink()
        res = hostctl_as(backend, "--home", str(home), "provision-save", "@srv",
                         "--context_type", "server", "--php_service_type", "php-fpm",
                         "--privileged_settings", str(settings), env=env)
        assert res.code == 0, res
        res = hostctl_as(backend, "--home", str(home), "doctor", env=env)
        line = privileged.sudoers_line(settings, backend.name, sys.executable)
        assert f"only as {bindir}/hostctl" in res.out and line in res.out, res
        assert res.code != 0

        # both lines: the new one is used, and doctor asks for the earlier one to go
        allow(sudoers, keep + f"{backend.name} ALL=(root) NOPASSWD: {earlier}\n" + line)
        assert call_as(backend, chosen) == privileged.sudo_argv(sys.executable)
        res = hostctl_as(backend, "--home", str(home), "doctor", env=env)
        assert f"as {bindir}/hostctl" in res.out and "remove that sudoers line" in res.out
        assert "add this one" not in res.out and res.code != 0, res
        assert TomlStore(Paths(home)).get("@srv").type == "server"
    finally:
        sudoers.unlink(missing_ok=True)
        fpm.stop()
        shutil.rmtree(planted, ignore_errors=True)
        shutil.rmtree(bindir, ignore_errors=True)
        shutil.rmtree(home.parent, ignore_errors=True)
