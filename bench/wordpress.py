"""How long a WordPress site takes to install through the queue, and to delete.

Usage (as root: php-fpm's master switches to each site's user; Debian's nginx, php-fpm,
mariadb-server and wordpress packages installed)::

    python3 bench/wordpress.py [--runs 7] [--json FILE]

It starts a private nginx, php-fpm and MariaDB on loopback (as the tests do,
tests/provisionhelpers.py), makes a platform from Debian's wordpress package
(examples/wordpress/make-platform.sh) and then, ``--runs`` times: ``hostctl task add
install @siteN`` and ``hostctl wait-queue --once`` as real processes, timed from the
``task add`` to the task's end (the site user, its database and user, settings file,
PHP-FPM pool served, vhost served); then WordPress's own install form over HTTP (for
scale: what the application itself takes); then the delete (backup included). Medians,
minimum and maximum in milliseconds. Timings are reported, never judged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from provisionhelpers import (  # noqa: E402
    remove_site_users,
    start_mariadb,
    start_nginx,
    start_php_fpm,
    world_readable_dir,
)

from hostctl.provision import privileged  # noqa: E402


def hostctl(home: Path, *argv: str) -> str:
    done = subprocess.run(["hostctl", "--home", str(home), *argv], capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"hostctl {' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def through_queue(home: Path, task: str, site: str, *options: str) -> float:
    start = time.perf_counter()
    task_id = hostctl(home, "task", "add", task, site, *options).strip()
    hostctl(home, "wait-queue", "--once")
    took = time.perf_counter() - start
    doc = json.loads(hostctl(home, "task", "show", task_id, "--json"))
    if doc["status"] != "success":
        raise SystemExit(f"{task} on {site} ended {doc['status']}: {doc.get('result')}")
    return took * 1000


def wordpress_form(port: int, host: str) -> float:
    import http.client

    body = urllib.parse.urlencode({
        "weblog_title": "Bench", "user_name": "admin", "admin_password": "Adm1n-pass!",
        "admin_password2": "Adm1n-pass!", "pw_weak": "1", "admin_email": "a@example.com",
        "blog_public": "0", "Submit": "Install WordPress"})
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/wp-admin/install.php?step=2", body=body,
                 headers={"Host": host, "Content-Type": "application/x-www-form-urlencoded"})
    page = conn.getresponse().read().decode("utf-8", "replace")
    conn.close()
    if "Success!" not in page:
        raise SystemExit(f"WordPress's install form failed for {host}")
    return (time.perf_counter() - start) * 1000


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 1), "min_ms": round(min(values), 1),
            "max_ms": round(max(values), 1), "runs": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    www = world_readable_dir("hostctl-bench-wp-")
    nginx = start_nginx(world_readable_dir("hostctl-bench-nginx-"))
    fpm = start_php_fpm([www], prefix="hbw")
    my = start_mariadb()
    prefix = privileged.load(fpm.settings).user_prefix
    home = Path(tempfile.mkdtemp(prefix="hostctl-bench-home-"))
    try:
        hostctl(home, "provision-save", "@srv", "--context_type", "server",
                *nginx.server_fields("bench"), *fpm.server_fields(),
                *my.server_fields())
        root = www / "wordpress"
        subprocess.run(["sh", str(HERE.parent / "examples/wordpress/make-platform.sh"),
                        str(root)], check=True, capture_output=True, timeout=300)
        hostctl(home, "provision-save", "@wp", "--context_type", "platform", "--root",
                str(root), "--web_server", "@srv")
        installs, forms, deletes = [], [], []
        for n in range(args.runs):
            site = f"@s{n}.bench.test"
            hostctl(home, "provision-save", site, "--context_type", "site", "--platform",
                    "@wp")
            installs.append(through_queue(home, "install", site))
            forms.append(wordpress_form(nginx.port, site.lstrip("@")))
        for n in range(args.runs):
            site = f"@s{n}.bench.test"
            hostctl(home, "provision-save", site, "--site_enabled", "false")
            deletes.append(through_queue(home, "delete", site))
        results = {"install_through_queue": summary(installs),
                   "wordpress_install_form": summary(forms),
                   "delete_through_queue": summary(deletes)}
    finally:
        nginx.stop()
        fpm.stop()
        my.stop()
        remove_site_users(prefix)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
