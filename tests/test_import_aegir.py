"""``hostctl import aegir``: Aegir 3's alias files into contexts (docs/aegir-import.md).

The alias files are written as provision writes them (its template
``provision_drushrc_alias.tpl.php``: ``<?php``, a space, a new line, then
``$aliases['NAME'] = `` and ``var_export()``'s output); :func:`var_export` below writes
PHP's format, and where ``php`` is installed the tests check it byte for byte against PHP's
own, and feed the parser files and random values that real PHP wrote.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hostctl.contexts import aegir

PHP = shutil.which("php")
needs_php = pytest.mark.skipif(PHP is None, reason="php is not installed")

PASSWORD = "S3cr:t p@ss/+&%'\"w\u00f6rd"
DB_PASSWORD = "an0ther-Secret!"
CRON_KEY = "cr0n-k3y-secret"


def _php_string(text: str) -> str:
    out = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return out.replace("\0", "' . \"\\0\" . '")


def _php_key(key: int | str) -> str:
    return str(key) if isinstance(key, int) else _php_string(key)


def var_export(value: Any, indent: str = "") -> str:
    """PHP's var_export($value, TRUE) for arrays, strings, ints, booleans and NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _php_string(value)
    items = value.items() if isinstance(value, dict) else enumerate(value)
    lines = ["array ("]
    for key, item in items:
        if isinstance(item, dict | list):
            lines.append(f"{indent}  {_php_key(key)} => \n{indent}  "
                         f"{var_export(item, indent + '  ')},")
        else:
            lines.append(f"{indent}  {_php_key(key)} => {var_export(item)},")
    lines.append(f"{indent})")
    return "\n".join(lines)


def alias_file(name: str, options: dict[str, Any]) -> str:
    """What provision_drushrc_alias.tpl.php writes."""
    return f"<?php \n$aliases['{name}'] = {var_export(options)};\n"


def master_db(user: str, password: str, host: str, port: int | None = None) -> str:
    from urllib.parse import quote_plus  # PHP's urlencode

    tail = f":{port}" if port else ""
    return f"mysql://{quote_plus(user)}:{quote_plus(password)}@{host}{tail}"


def install() -> dict[str, dict[str, Any]]:
    """A typical Aegir 3 install: the master server (web and database), a separate
    database server, the hostmaster platform and site (with its @hm drush alias), a
    second platform and its sites."""
    nginx = {"nginx_config_mode": "extended", "nginx_is_modern": True,
             "nginx_has_etag": False, "nginx_has_http2": True, "nginx_has_gzip": False,
             "nginx_has_upload_progress": False, "provision_db_cloaking": True,
             "phpfpm_mode": "port", "subdirs_support": False, "satellite_mode": "vanilla"}
    hostmaster = {
        "context_type": "site", "platform": "@platform_hostmaster", "server": "@server_master",
        "db_server": "@server_master", "uri": "aegir.example.com",
        "root": "/var/aegir/hostmaster-7.x-3.20", "site_path":
        "/var/aegir/hostmaster-7.x-3.20/sites/aegir.example.com", "site_enabled": True,
        "language": "en", "client_name": "admin", "aliases": [], "redirection": False,
        "cron_key": CRON_KEY, "drush_aliases": ["hm"], "profile": "hostmaster",
        "install_method": "profile", "ssl_enabled": 0, "ssl_key": None, "ip_addresses": []}
    return {
        "server_master": {
            "context_type": "server", "server": "@server_master",
            "remote_host": "aegir.example.com", "aegir_root": "/var/aegir",
            "script_user": "aegir", "ip_addresses": ["192.0.2.10"],
            "backup_path": "/var/aegir/backups", "config_path": "/var/aegir/config/server_master",
            "include_path": "/var/aegir/config/includes", "clients_path": "/var/aegir/clients",
            "master_url": "http://aegir.example.com", "admin_email": "admin@aegir.example.com",
            "http_service_type": "nginx", "http_port": "80",
            "http_restart_cmd": "sudo /etc/init.d/nginx reload", "web_group": "www-data",
            "http_platformd_path": "/var/aegir/config/server_master/nginx/platform.d",
            "http_vhostd_path": "/var/aegir/config/server_master/nginx/vhost.d",
            "http_platforms_path": "/var/aegir/platforms", **nginx,
            "db_service_type": "mysql",
            "master_db": master_db("aegir_root", PASSWORD, "localhost", 3306),
            "db_port": "3306", "db_grant_all_hosts": False, "utf8mb4_is_supported": True},
        "server_db1examplecom": {
            "context_type": "server", "server": "@server_master",
            "remote_host": "db1.example.com", "aegir_root": "/var/aegir", "script_user": "aegir",
            "ip_addresses": [], "backup_path": "/var/aegir/backups",
            "config_path": "/var/aegir/config/server_db1examplecom",
            "include_path": "/var/aegir/config/includes", "clients_path": "/var/aegir/clients",
            "master_url": "http://aegir.example.com", "admin_email": "admin@db1.example.com",
            "http_service_type": None, "db_service_type": "mysql",
            "master_db": master_db("aegir_root", DB_PASSWORD, "db1.example.com"),
            "db_port": "3306", "db_grant_all_hosts": True, "utf8mb4_is_supported": True},
        "platform_hostmaster": {
            "context_type": "platform", "server": "@server_master",
            "web_server": "@server_master", "root": "/var/aegir/hostmaster-7.x-3.20",
            "makefile": "/var/aegir/.drush/provision/aegir.make", "make_working_copy": False},
        "platform_drupal7": {
            "context_type": "platform", "server": "@server_master",
            "web_server": "@server_master", "root": "/var/aegir/platforms/drupal-7.99",
            "makefile": "", "make_working_copy": False},
        "hostmaster": hostmaster,
        "hm": dict(hostmaster),
        "example.com": {
            "context_type": "site", "platform": "@platform_drupal7", "server": "@server_master",
            "db_server": "@server_db1examplecom", "uri": "example.com",
            "root": "/var/aegir/platforms/drupal-7.99",
            "site_path": "/var/aegir/platforms/drupal-7.99/sites/example.com",
            "site_enabled": True, "language": "en", "client_name": "acme",
            "aliases": ["www.example.com", "example.net"], "redirection": "example.com",
            "cron_key": "", "drush_aliases": [], "profile": "standard",
            "install_method": "profile", "ssl_enabled": 2, "ssl_key": "example.com",
            "ip_addresses": []},
        "blog.example.org": {
            "context_type": "site", "platform": "@platform_drupal7", "server": "@server_master",
            "db_server": "@server_master", "uri": "blog.example.org",
            "root": "/var/aegir/platforms/drupal-7.99",
            "site_path": "/var/aegir/platforms/drupal-7.99/sites/blog.example.org",
            "site_enabled": False, "language": "fr", "client_name": "O'Brien & Co",
            "aliases": [], "redirection": False, "cron_key": "", "drush_aliases": [],
            "profile": "standard", "install_method": "profile", "ssl_enabled": "0",
            "ssl_key": None},
    }


def write_install(folder: Path, contexts: dict[str, dict[str, Any]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, options in (contexts if contexts is not None else install()).items():
        (folder / f"{name}{aegir.SUFFIX}").write_text(alias_file(name, options))
        os.chmod(folder / f"{name}{aegir.SUFFIX}", 0o440)  # as provision leaves them
    # what else lives in ~aegir/.drush, passed over
    (folder / "drushrc.php").write_text("<?php\n$options['x'] = system('id');\n")
    return folder


@pytest.fixture
def drush(tmp_path: Path) -> Path:
    return write_install(tmp_path / "aegir" / ".drush")


def _contexts(home: Path) -> list[str]:
    folder = home / "contexts"
    return sorted(p.name for p in folder.glob("*.toml")) if folder.exists() else []


def _show(run_hostctl: Callable[..., Any], name: str) -> dict[str, Any]:
    res = run_hostctl("context", "show", name, "--json", "--show-secrets")
    assert res.code == 0, res.err
    fields: dict[str, Any] = json.loads(res.out)["fields"]
    return fields


def _no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (PASSWORD, DB_PASSWORD, CRON_KEY, "S3cr%3At", "S3cr"):
            assert secret not in text


# -- the format ---------------------------------------------------------------------------


@needs_php
def test_the_fixtures_are_what_php_writes(tmp_path: Path) -> None:
    """The test's var_export is PHP's, byte for byte, and the template's file is what the
    parser reads."""
    for name, options in install().items():
        src = tmp_path / "o.json"
        src.write_text(json.dumps(options))
        script = ("$o = json_decode(file_get_contents($argv[1]), true); "
                  "print \"<?php \\n\"; ?>\n$aliases['" + name + "'] = "
                  "<?php print var_export($o, TRUE); ?>;\n")
        prog = tmp_path / "tpl.php"
        prog.write_text("<?php " + script)
        res = subprocess.run([PHP or "php", str(prog), str(src)], capture_output=True,
                             text=True, check=True)
        assert res.stdout == alias_file(name, options)
        assert aegir.parse_alias_file(res.stdout) == [(name, _as_php(options))]


def _as_php(value: Any) -> Any:
    if isinstance(value, list):
        return {i: _as_php(v) for i, v in enumerate(value)}
    if isinstance(value, dict):
        return {k: _as_php(v) for k, v in value.items()}
    return value


@needs_php
def test_a_file_php_wrote_with_tricky_strings_imports(
        tmp_path: Path, run_hostctl: Callable[..., Any]) -> None:
    """Quotes, backslashes, new lines, a NUL byte and UTF-8, written by PHP itself."""
    folder = write_install(tmp_path / "drush", {
        k: v for k, v in install().items() if k in ("server_master", "platform_drupal7")})
    script = r"""
$o = array(
  'context_type' => 'site',
  'platform' => '@platform_drupal7',
  'uri' => 'tricky.example.com',
  'client_name' => "O'Brien \\ \"Ünïcødé\" 日本",
  'notes' => "line one\nline 'two'\r\n\\\\ end\0 after nul",
  'aliases' => array('www.tricky.example.com'),
  'weights' => array(-3 => 1.5, 7 => -2, 'x' => NULL, 'y' => true),
);
print "<?php \n"; ?>
$aliases['tricky.example.com'] = <?php print var_export($o, TRUE); ?>;
"""
    prog = tmp_path / "make.php"
    prog.write_text("<?php " + script)
    out = subprocess.run([PHP or "php", str(prog)], capture_output=True, check=True).stdout
    (folder / f"tricky.example.com{aegir.SUFFIX}").write_bytes(out)
    res = run_hostctl("import", "aegir", str(folder), "--json")
    assert res.code == 0, res.err
    fields = _show(run_hostctl, "@tricky.example.com")
    assert fields["client_name"] == "O'Brien \\ \"Ünïcødé\" 日本"
    assert fields["aliases"] == ["www.tricky.example.com"]
    report = json.loads(res.out)
    site = next(c for c in report["contexts"] if c["name"] == "@tricky.example.com")
    assert {d["aegir"] for d in site["dropped"]} == {"notes", "weights"}


# random PHP values: what real PHP's var_export writes reads back as the same value
_keys = st.one_of(st.integers(-10**6, 10**6), st.text(max_size=8))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, width=64), st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.dictionaries(_keys, inner, max_size=4),
                       max_leaves=12)


@needs_php
@settings(max_examples=6, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_values, min_size=10, max_size=10))
@example([float("inf"), float("-inf"), -0.0, -(2**63), 2**63 - 1, "a\0b'\\\n\u00e9",
          {"5": 1, "05": 2, -1: {"": None}}, 1e25, 0.1, True])
def test_random_values_php_writes_parse_back_equal(tmp_path: Path, batch: list[Any]) -> None:
    """Random nested values (6 batches of 10, each written by one run of real PHP) parse
    back equal."""
    # PHP turns numeric string keys into integers ('5' is 5): compare with what PHP holds
    src = tmp_path / "values.json"
    src.write_text(json.dumps([_tagged(v) for v in batch]))
    prog = tmp_path / "dump.php"
    prog.write_text(r"""<?php
function untag($v) {
  if (!is_array($v)) return $v;
  if ($v[0] === 's') return $v[1];
  if ($v[0] === 'f') return (float) $v[1];
  if ($v[0] === 'i') return $v[1] * INF;
  $out = array();
  foreach ($v[1] as $pair) { $out[untag($pair[0])] = untag($pair[1]); }
  return $out;
}
foreach (json_decode(file_get_contents($argv[1]), true) as $v) {
  print var_export(untag($v), TRUE) . "\n\x01\n";
}
""")
    out = subprocess.run([PHP or "php", str(prog), str(src)], capture_output=True,
                         check=True).stdout.decode("utf-8")
    chunks = out.split("\n\x01\n")[:-1]
    assert len(chunks) == len(batch)
    for value, text in zip(batch, chunks, strict=True):
        assert aegir.parse_export(text) == _php_keys(value), text


def _tagged(value: Any) -> Any:
    """JSON that PHP turns back into exactly this value (strings stay strings, floats
    floats, dictionaries keep their key types)."""
    if isinstance(value, dict):
        return ["a", [[_tagged(k), _tagged(v)] for k, v in value.items()]]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, float):
        return ["i", 1 if value > 0 else -1] if math.isinf(value) else ["f", value]
    return value


def _php_keys(value: Any) -> Any:
    """The value as PHP holds it: decimal-integer string keys are integers, a later
    duplicate key replaces an earlier one."""
    if not isinstance(value, dict):
        return value
    out: dict[Any, Any] = {}
    for key, item in value.items():
        if isinstance(key, str) and _decimal(key):
            key = int(key)
        out[key] = _php_keys(item)
    return out


def _decimal(key: str) -> bool:
    if key == "0":
        return True
    body = key[1:] if key.startswith("-") else key
    return (body.isascii() and body.isdigit() and not body.startswith("0")
            and -(2**63) <= int(key) < 2**63)


# -- a typical install --------------------------------------------------------------------


def test_a_typical_install_is_imported(drush: Path, home: Path,
                                       run_hostctl: Callable[..., Any]) -> None:
    res = run_hostctl("import", "aegir", str(drush))
    assert res.code == 0, res.err
    assert _contexts(home) == sorted(f"{n}.toml" for n in (
        "server_master", "server_db1examplecom", "platform_hostmaster", "platform_drupal7",
        "hostmaster", "example.com", "blog.example.org"))
    # servers first, then platforms, then sites; the drush alias @hm skipped
    lines = [line for line in res.out.splitlines() if not line.startswith("  ")]
    assert [line.split()[1] for line in lines[:-1]] == [
        "@server_db1examplecom", "@server_master", "@platform_drupal7",
        "@platform_hostmaster", "@blog.example.org", "@example.com", "@hm", "@hostmaster"]
    assert lines[-1] == "8 file(s): 7 saved, 1 skipped"
    assert "skipped @hm (site)" in res.out and "a drush alias of @hostmaster" in res.out

    master = _show(run_hostctl, "@server_master")
    assert master["remote_host"] == "aegir.example.com"
    assert master["ip_addresses"] == ["192.0.2.10"]
    assert master["http_service_type"] == "nginx"
    assert master["http_port"] == 80 and master["db_port"] == 3306
    assert master["http_restart_cmd"] == "sudo /etc/init.d/nginx reload"
    assert master["db_service_type"] == "mysql"
    assert master["db_user"] == "aegir_root" and master["db_host"] == "localhost"
    assert master["db_passwd"] == PASSWORD
    assert master["config_path"] is None  # dropped: Aegir's generated configuration
    assert master["backup_path"] == "/var/aegir/backups"
    db1 = _show(run_hostctl, "@server_db1examplecom")
    assert db1["http_service_type"] == "none" and db1["db_host"] == "db1.example.com"
    assert db1["db_passwd"] == DB_PASSWORD

    platform = _show(run_hostctl, "@platform_hostmaster")
    assert platform["root"] == "/var/aegir/hostmaster-7.x-3.20"
    assert platform["web_server"] == "@server_master"
    assert platform["makefile"] == "/var/aegir/.drush/provision/aegir.make"

    site = _show(run_hostctl, "@example.com")
    assert site["platform"] == "@platform_drupal7"
    assert site["db_server"] == "@server_db1examplecom"
    assert site["aliases"] == ["www.example.com", "example.net"]
    assert site["redirection"] is True  # Aegir's redirection to the uri
    assert site["ssl_enabled"] is True and site["ssl_key"] == "example.com"
    blog = _show(run_hostctl, "@blog.example.org")
    assert blog["site_enabled"] is False and blog["language"] == "fr"
    assert blog["ssl_enabled"] is False and blog["client_name"] == "O'Brien & Co"
    hostmaster = _show(run_hostctl, "@hostmaster")
    assert hostmaster["uri"] == "aegir.example.com" and hostmaster["drush_aliases"] == ["hm"]
    assert hostmaster["cron_key"] == CRON_KEY and hostmaster["profile"] == "hostmaster"
    _no_secret(res.out, res.err)


def test_the_report_lists_what_is_mapped_and_dropped(
        drush: Path, run_hostctl: Callable[..., Any]) -> None:
    res = run_hostctl("import", "aegir", str(drush), "--json")
    assert res.code == 0, res.err
    _no_secret(res.out, res.err)
    report = json.loads(res.out)
    assert report["dry_run"] is False and report["files"] == 8
    assert report["counts"] == {"saved": 7, "updated": 0, "unchanged": 0, "skipped": 1}
    by_name = {c["name"]: c for c in report["contexts"]}
    master = by_name["@server_master"]
    assert master["type"] == "server" and master["action"] == "saved"
    assert master["file"].endswith("server_master.alias.drushrc.php")
    mapped = {(m["aegir"], m["field"]): m["value"] for m in master["mapped"]}
    assert mapped[("master_db", "db_passwd")] == "********"
    assert mapped[("master_db", "db_user")] == "aegir_root"
    assert mapped[("http_port", "http_port")] == 80
    dropped = {d["aegir"]: d["reason"] for d in master["dropped"]}
    assert set(dropped) >= {"config_path", "http_vhostd_path", "nginx_config_mode",
                            "db_grant_all_hosts", "utf8mb4_is_supported", "server"}
    assert "hostctl writes its own" in dropped["config_path"]
    site = by_name["@example.com"]
    assert {d["aegir"] for d in site["dropped"]} == {"root", "site_path", "ip_addresses"}
    assert by_name["@hm"]["action"] == "skipped"
    hostmaster = {m["field"]: m["value"] for m in by_name["@hostmaster"]["mapped"]}
    assert hostmaster["cron_key"] == "********"
    # the text output says the same
    text = run_hostctl("import", "aegir", str(drush), "--dry-run")
    assert "  config_path: dropped: a folder of Aegir's generated configuration" in text.out
    assert "  master_db -> db_passwd = ********" in text.out
    assert "  http_port -> http_port = 80" in text.out


def test_dry_run_writes_nothing(drush: Path, home: Path,
                                run_hostctl: Callable[..., Any]) -> None:
    res = run_hostctl("import", "aegir", str(drush), "--dry-run")
    assert res.code == 0, res.err
    assert "would save @server_master (server)" in res.out
    assert res.out.splitlines()[-1] == ("8 file(s): 7 saved, 1 skipped; dry run: nothing "
                                        "written")
    assert _contexts(home) == []
    _no_secret(res.out, res.err)
    js = run_hostctl("import", "aegir", str(drush), "--dry-run", "--json")
    assert json.loads(js.out)["dry_run"] is True
    assert _contexts(home) == []
    _no_secret(js.out, js.err)


def test_a_second_import_changes_nothing(drush: Path, home: Path,
                                         run_hostctl: Callable[..., Any]) -> None:
    assert run_hostctl("import", "aegir", str(drush)).code == 0
    before = {p.name: p.stat().st_mtime_ns for p in (home / "contexts").glob("*.toml")}
    again = run_hostctl("import", "aegir", str(drush), "--json")
    assert again.code == 0, again.err
    report = json.loads(again.out)
    assert report["counts"] == {"saved": 0, "updated": 0, "unchanged": 7, "skipped": 1}
    after = {p.name: p.stat().st_mtime_ns for p in (home / "contexts").glob("*.toml")}
    assert after == before
    dry = run_hostctl("import", "aegir", str(drush), "--dry-run")
    assert "unchanged @server_master (server)" in dry.out


def test_a_changed_context_is_updated_and_others_kept(
        drush: Path, run_hostctl: Callable[..., Any]) -> None:
    assert run_hostctl("import", "aegir", str(drush)).code == 0
    assert run_hostctl("provision-save", "@example.com", "--language", "de",
                       "--protected", "yes").code == 0
    res = run_hostctl("import", "aegir", str(drush), "--json")
    assert res.code == 0, res.err
    site = next(c for c in json.loads(res.out)["contexts"] if c["name"] == "@example.com")
    assert site["action"] == "updated" and site["changed"] == ["language"]
    fields = _show(run_hostctl, "@example.com")
    assert fields["language"] == "en" and fields["protected"] is True  # merged, as a save


def test_one_file_at_a_time_with_references_to_the_store(
        drush: Path, run_hostctl: Callable[..., Any]) -> None:
    site = drush / f"example.com{aegir.SUFFIX}"
    res = run_hostctl("import", "aegir", str(site))
    assert res.code == 2
    assert "platform: no context @platform_drupal7 in the import or in hostctl" in res.err
    for name in ("server_master", "server_db1examplecom", "platform_drupal7"):
        assert run_hostctl("import", "aegir", str(drush / f"{name}{aegir.SUFFIX}")).code == 0
    res = run_hostctl("import", "aegir", str(site))
    assert res.code == 0, res.err
    assert "saved @example.com (site)" in res.out


# -- refusals: nothing half-imported --------------------------------------------------------


def test_a_bad_file_among_good_ones_imports_nothing(
        drush: Path, home: Path, run_hostctl: Callable[..., Any]) -> None:
    bad = drush / f"broken.example.com{aegir.SUFFIX}"
    bad.write_text("<?php \n$aliases['broken.example.com'] = array (\n  'uri' => 'x',\n")
    wrong = drush / f"wrong.example.com{aegir.SUFFIX}"
    wrong.write_text(alias_file("wrong.example.com", {
        "context_type": "site", "platform": "@server_master", "uri": "wrong.example.com"}))
    res = run_hostctl("import", "aegir", str(drush))
    assert res.code == 2
    assert _contexts(home) == []
    lines = res.err.splitlines()
    assert lines[-1] == "hostctl: error: 2 alias files refused; nothing imported"
    assert lines[0].startswith(f"hostctl: refused: {bad}: line 4:")
    assert lines[1] == (f"hostctl: refused: {wrong}: platform: @server_master is a server, "
                        "not a platform")
    js = run_hostctl("import", "aegir", str(drush), "--json")
    assert js.code == 2
    doc = json.loads(js.out)
    assert doc["imported"] is False
    assert [r["file"] for r in doc["refused"]] == [str(bad), str(wrong)]
    assert _contexts(home) == []


HOSTILE = {
    "code before": "<?php \nsystem('touch /tmp/pwned');\n$aliases['x'] = array (\n);\n",
    "code after": "<?php \n$aliases['x'] = array (\n);\nexec('id');\n",
    "set_state": "<?php \n$aliases['x'] = \\Foo::__set_state(array (\n));\n",
    "object": "<?php \n$aliases['x'] = (object) array (\n);\n",
    "heredoc": "<?php \n$aliases['x'] = array (\n  'uri' => <<<EOT\nx\nEOT,\n);\n",
    "call": "<?php \n$aliases['x'] = array (\n  'uri' => getenv('HOME'),\n);\n",
    "concatenation": "<?php \n$aliases['x'] = array (\n  'uri' => 'a' . 'b',\n);\n",
    "double quotes": "<?php \n$aliases['x'] = array (\n  'uri' => \"$x\",\n);\n",
    "constant": "<?php \n$aliases['x'] = array (\n  'uri' => PHP_VERSION,\n);\n",
    "closing tag": "<?php \n$aliases['x'] = array (\n);\n?>\n<?php phpinfo();\n",
    "short tag": "<? $aliases['x'] = array (\n);\n",
    "html first": "hello<?php \n$aliases['x'] = array (\n);\n",
    "lone backslash": "<?php \n$aliases['x'] = array (\n  'uri' => 'a\\nb',\n);\n",
    "unclosed string": "<?php \n$aliases['x'] = array (\n  'uri' => 'abc,\n);\n",
    "no semicolon": "<?php \n$aliases['x'] = array (\n)\n",
    "other variable": "<?php \n$options['x'] = array (\n);\n",
    "two aliases": "<?php \n$aliases['x'] = array (\n);\n$aliases['y'] = array (\n);\n",
    "another name": "<?php \n$aliases['y'] = array (\n  'context_type' => 'server',\n);\n",
    "duplicate key": "<?php \n$aliases['x'] = array (\n  'a' => 1,\n  'a' => 2,\n);\n",
    "comment": "<?php \n// hi\n$aliases['x'] = array (\n);\n",
    "not an array": "<?php \n$aliases['x'] = 'server';\n",
    "no type": "<?php \n$aliases['x'] = array (\n  'remote_host' => 'x.example.com',\n);\n",
    "deep": "<?php \n$aliases['x'] = " + "array (\n 0 => " * 40 + "1" + ",\n)" * 40 + ";\n",
    "not utf-8": "<?php \n$aliases['x'] = array (\n  'a' => '\udcff',\n);\n",
    "bad value": "<?php \n$aliases['x'] = array (\n  'context_type' => 'server',\n"
                 "  'http_port' => '99999',\n);\n",
    "empty": "",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_are_refused(case: str, drush: Path, home: Path, tmp_path: Path,
                                   run_hostctl: Callable[..., Any]) -> None:
    path = drush / f"x{aegir.SUFFIX}"
    path.write_bytes(HOSTILE[case].encode("utf-8", "surrogateescape"))
    res = run_hostctl("import", "aegir", str(drush))
    assert res.code == 2, res.out
    assert res.err.startswith(f"hostctl: refused: {path}: "), res.err
    assert len(res.err.splitlines()) == 2  # one line for the file, one to say so
    assert _contexts(home) == []
    assert not Path("/tmp/pwned").exists()


def test_a_huge_file_is_refused_unread(drush: Path, home: Path,
                                       run_hostctl: Callable[..., Any]) -> None:
    big = drush / f"big{aegir.SUFFIX}"
    big.write_text("<?php \n$aliases['big'] = array (\n  'a' => '"
                   + "x" * (aegir.MAX_FILE_BYTES + 1) + "',\n);\n")
    res = run_hostctl("import", "aegir", str(drush))
    assert res.code == 2
    assert f"{big}: larger than {aegir.MAX_FILE_BYTES} bytes" in res.err
    assert _contexts(home) == []


def test_links_fifos_and_folders_are_not_read(drush: Path, tmp_path: Path, home: Path,
                                              run_hostctl: Callable[..., Any]) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$hash:19000:0:99999:7:::\n")
    (drush / f"link{aegir.SUFFIX}").symlink_to(secret)
    os.mkfifo(drush / f"fifo{aegir.SUFFIX}")
    (drush / f"folder{aegir.SUFFIX}").mkdir()
    res = run_hostctl("import", "aegir", str(drush))
    assert res.code == 2
    assert f"{drush / f'link{aegir.SUFFIX}'}: cannot read it: a symbolic link" in res.err
    assert f"{drush / f'fifo{aegir.SUFFIX}'}: not a regular file" in res.err
    assert f"{drush / f'folder{aegir.SUFFIX}'}: not a regular file" in res.err
    assert "$6$hash" not in res.err + res.out
    assert _contexts(home) == []


@pytest.mark.parametrize("name, why", [
    ("bad name", "cannot be a hostctl context"),
    ("a..b", "'..' is not allowed"),
    ("-dash", "cannot be a hostctl context"),
    ("x" * 236, "longer than 235 characters"),
    ("caf\u00e9.example.com", "cannot be a hostctl context"),
])
def test_names_hostctl_cannot_hold_are_refused(name: str, why: str, tmp_path: Path,
                                               home: Path,
                                               run_hostctl: Callable[..., Any]) -> None:
    folder = write_install(tmp_path / "d", {k: v for k, v in install().items()
                                            if k == "server_master"})
    path = folder / f"{name}{aegir.SUFFIX}"
    path.write_text(alias_file(name, {"context_type": "server", "remote_host": "x.example"}))
    res = run_hostctl("import", "aegir", str(folder))
    assert res.code == 2
    assert f"{path}: the name" in res.err and why in res.err
    assert _contexts(home) == []


def test_an_upper_case_name_is_lower_cased(tmp_path: Path,
                                           run_hostctl: Callable[..., Any]) -> None:
    contexts = {"server_master": install()["server_master"],
                "Platform_Drupal7": install()["platform_drupal7"]}
    contexts["Shop.Example.com"] = {"context_type": "site", "platform": "@Platform_Drupal7",
                                    "uri": "Shop.Example.com"}
    folder = write_install(tmp_path / "d", contexts)
    res = run_hostctl("import", "aegir", str(folder), "--json")
    assert res.code == 0, res.err
    site = next(c for c in json.loads(res.out)["contexts"] if c["type"] == "site")
    assert site["name"] == "@shop.example.com"
    assert site["aegir_name"] == "@Shop.Example.com"
    fields = _show(run_hostctl, "@shop.example.com")
    assert fields["uri"] == "shop.example.com"
    assert fields["platform"] == "@platform_drupal7"  # the reference follows the rename


def test_a_context_of_another_type_is_a_conflict(drush: Path, home: Path,
                                                 run_hostctl: Callable[..., Any]) -> None:
    assert run_hostctl("provision-save", "@platform_drupal7", "--context_type",
                       "server").code == 0
    res = run_hostctl("import", "aegir", str(drush))
    assert res.code == 2
    assert ("@platform_drupal7 is a server in hostctl, not a platform: delete one first"
            in res.err)
    assert _contexts(home) == ["platform_drupal7.toml"]


def test_a_host_name_another_site_has_is_refused(drush: Path, home: Path,
                                                 run_hostctl: Callable[..., Any]) -> None:
    for args in (("@srv", "--context_type", "server"),
                 ("@app", "--context_type", "platform", "--root", "/srv/app"),
                 ("@other", "--context_type", "site", "--platform", "@app", "--uri",
                  "www.example.com")):
        assert run_hostctl("provision-save", *args).code == 0
    res = run_hostctl("import", "aegir", str(drush))
    assert res.code == 2
    assert "the host name www.example.com is taken by @other" in res.err
    assert _contexts(home) == ["app.toml", "other.toml", "srv.toml"]


def test_a_bad_password_is_refused_without_showing_it(tmp_path: Path, home: Path,
                                                      run_hostctl: Callable[..., Any]) -> None:
    contexts = {"server_master": dict(install()["server_master"])}
    contexts["server_master"]["master_db"] = "mysql://root:S3cr%0Atnewline@localhost"
    folder = write_install(tmp_path / "d", contexts)
    res = run_hostctl("import", "aegir", str(folder))
    assert res.code == 2
    assert "db_passwd: the value (secret, not shown)" in res.err
    assert "S3cr" not in res.err + res.out
    contexts["server_master"]["master_db"] = "S3cr3t-not-a-url"
    folder = write_install(tmp_path / "e", contexts)
    res = run_hostctl("import", "aegir", str(folder))
    assert res.code == 2
    assert "master_db (not shown: it holds a password)" in res.err
    assert "S3cr" not in res.err + res.out
    assert _contexts(home) == []


def test_secrets_stay_out_of_the_logs_and_the_command_line(
        drush: Path, home: Path, hostctl_process: Callable[..., Any]) -> None:
    res = hostctl_process("-vv", "import", "aegir", str(drush))
    assert res.returncode == 0, res.stderr
    _no_secret(res.stdout, res.stderr)
    for path in home.rglob("*"):
        if path.is_file() and path.parent.name != "contexts":
            _no_secret(path.read_text(errors="replace"))
    # the context file keeps it, as provision-save keeps a server's db_passwd
    assert (home / "contexts" / "server_master.toml").stat().st_mode & 0o077 == 0


# -- the path -----------------------------------------------------------------------------


def test_without_a_path_it_reads_the_aegir_users_drush_folder(
        drush: Path, monkeypatch: pytest.MonkeyPatch,
        run_hostctl: Callable[..., Any]) -> None:
    import pwd

    real = pwd.getpwnam

    def getpwnam(name: str) -> Any:
        if name != "aegir":
            return real(name)
        return pwd.struct_passwd(("aegir", "x", 1000, 1000, "", str(drush.parent), "/bin/sh"))

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    res = run_hostctl("import", "aegir", "--dry-run")
    assert res.code == 0, res.err
    assert "would save @hostmaster (site)" in res.out
    shutil.rmtree(drush)
    res = run_hostctl("import", "aegir")
    assert res.code == 2
    assert f"{drush} is not a folder" in res.err


def test_without_an_aegir_user_it_says_so(monkeypatch: pytest.MonkeyPatch,
                                          run_hostctl: Callable[..., Any]) -> None:
    monkeypatch.setattr(aegir, "AEGIR_USER", "no-such-user-here")
    res = run_hostctl("import", "aegir")
    assert res.code == 2
    assert "there is no user no-such-user-here here" in res.err


def test_paths_that_hold_no_alias_file(tmp_path: Path,
                                       run_hostctl: Callable[..., Any]) -> None:
    res = run_hostctl("import", "aegir", str(tmp_path / "missing"))
    assert res.code == 2 and "does not exist" in res.err
    (tmp_path / "empty").mkdir()
    res = run_hostctl("import", "aegir", str(tmp_path / "empty"))
    assert res.code == 2 and "holds no *.alias.drushrc.php file" in res.err
    other = tmp_path / "notes.txt"
    other.write_text("x")
    res = run_hostctl("import", "aegir", str(other))
    assert res.code == 2 and "is not an alias file" in res.err
