"""Backup and restore throughput of a site against the floor on the same data.

Usage (Debian's postgresql and zstd installed; as root, or as a user that may run
PostgreSQL's initdb)::

    python3 bench/backup.py [--files-mb 200] [--db-mb 50] [--runs 5] [--json FILE]

The site: ``--files-mb`` of files (three quarters many small text files, in folders of a
hundred; one quarter a few large files of random bytes, which do not compress) and a
PostgreSQL database of about ``--db-mb`` (rows of text, half random, half repeated), on a
private cluster started for the run. Measured, ``--runs`` times each, alternating:

backup        ``hostctl provision-backup @site`` (a real process; the dump streamed into
              a zstd archive, the restore checker run on it)
backup floor  what the same data costs with the tools alone: ``tar -cf - SITE | zstd -3
              -T0`` then ``pg_dump | zstd -3 -T0``, into files on the same disk, then
              ``sync`` of both (a backup is durable: hostctl fsyncs its archive)
restore       ``hostctl provision-restore @site --file ...`` (a backup of the current state
              first, as restore always makes; the files extracted; the dump loaded into a
              new database swapped in)
restore floor ``zstd -dc | tar -xf -`` of the files, then ``zstd -dc | psql`` of the dump
              into a fresh database, plus the floor backup (restore's own pre-backup)

Medians in seconds, MB/s of site data (files plus dump), and the ratio to the floor.
Timings are reported, never judged; the goal is a backup within 1.5x of its floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from provisionhelpers import PgCluster, start_postgres, world_readable_dir  # noqa: E402


def hostctl(home: Path, *argv: str) -> str:
    done = subprocess.run(["hostctl", "--home", str(home), *argv], capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"hostctl {' '.join(argv)} failed: {done.stderr.strip()} "
                         f"{done.stdout.strip()[-2000:]}")
    return done.stdout


def make_files(top: Path, megabytes: int) -> None:
    small_total = megabytes * (3 << 20) // 4
    words = b"the quick brown fox jumps over the lazy dog while hostctl backs it up\n"
    n = 0
    written = 0
    while written < small_total:
        folder = top / "files" / f"d{n // 100:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        body = words * (20 + n % 400) + os.urandom(64).hex().encode()
        (folder / f"page{n}.html").write_bytes(body)
        written += len(body)
        n += 1
    big = top / "media"
    big.mkdir(parents=True, exist_ok=True)
    left = megabytes * (1 << 20) - written
    i = 0
    while left > 0:
        size = min(left, 16 << 20)
        (big / f"video{i}.bin").write_bytes(os.urandom(size))
        left -= size
        i += 1


def fill_database(pg: PgCluster, env: dict[str, str], megabytes: int) -> None:
    """The site's own table (its user's, as an application makes it), filled."""
    rows = megabytes * 1024 * 1024 // 1100
    sql = ("CREATE TABLE notes (id SERIAL PRIMARY KEY, body TEXT);"
           "INSERT INTO notes (body) SELECT CASE WHEN i % 2 = 0 THEN "
           "repeat(md5(random()::text), 32) ELSE repeat('a note that repeats ', 51) END "
           f"FROM generate_series(1, {rows}) AS i;")
    subprocess.run([f"{pg.bindir}/psql", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                   env={**os.environ, **env}, check=True, timeout=600)


def shell(script: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(["sh", "-c", script], check=True, env={**os.environ, **(env or {})},
                   timeout=3600, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files-mb", type=int, default=200)
    parser.add_argument("--db-mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for tool in ("zstd", "tar", "sh"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    pg = start_postgres()
    www = world_readable_dir("hostctl-bench-backup-")
    home = Path(tempfile.mkdtemp(prefix="hostctl-bench-home-"))
    floor_dir = Path(tempfile.mkdtemp(prefix="hostctl-bench-floor-", dir=home.parent))
    try:
        root = www / "plat"
        root.mkdir()
        hostctl(home, "provision-save", "@db", "--context_type", "server",
                "--http_service_type", "none", *pg.server_fields())
        (root / "hostctl-app.toml").write_text("format = 1\n")
        hostctl(home, "provision-save", "@plat", "--context_type", "platform", "--root",
                str(root), "--web_server", "@db")
        hostctl(home, "provision-save", "@bench.example", "--context_type", "site",
                "--platform", "@plat")
        hostctl(home, "provision-install", "@bench.example")
        secrets = __import__("tomllib").loads((home / "secrets" / "bench.example.toml")
                                              .read_text())
        db = secrets["db"]
        pg_env = {"PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": db["user"],
                  "PGPASSWORD": db["password"], "PGDATABASE": db["name"]}
        fill_database(pg, pg_env, args.db_mb)
        site = root / "sites" / "bench.example"
        make_files(site, args.files_mb)
        files_bytes = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        bindir = pg.bindir
        dump_bytes = int(subprocess.run(
            ["sh", "-c", f"{bindir}/pg_dump --no-owner --no-privileges | wc -c"],
            env={**os.environ, **pg_env}, capture_output=True, text=True,
            check=True).stdout)
        floor_backup = (f"tar -C {site.parent} -cf - {site.name} | zstd -q -3 -T0 -o "
                        f"{floor_dir}/files.tar.zst -f && {bindir}/pg_dump --no-owner "
                        f"--no-privileges | zstd -q -3 -T0 -o {floor_dir}/dump.sql.zst -f && "
                        # durable, as a backup is (hostctl fsyncs its archive)
                        f"sync {floor_dir}/files.tar.zst {floor_dir}/dump.sql.zst")
        admin_env = {"PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": pg.admin,
                     "PGPASSWORD": pg.password, "PGDATABASE": "postgres",
                     "PGOPTIONS": "-c client_min_messages=warning"}
        floor_restore = (f"rm -rf {floor_dir}/out && mkdir {floor_dir}/out && zstd -q -dc "
                         f"{floor_dir}/files.tar.zst | tar -C {floor_dir}/out -xf - && "
                         f"{bindir}/psql -q -c 'DROP DATABASE IF EXISTS floorcopy' -c "
                         f"'CREATE DATABASE floorcopy' && zstd -q -dc "
                         f"{floor_dir}/dump.sql.zst | PGDATABASE=floorcopy {bindir}/psql -q "
                         "-v ON_ERROR_STOP=1 --single-transaction -f - >/dev/null")
        backups: list[float] = []
        floors: list[float] = []
        restores: list[float] = []
        restore_floors: list[float] = []
        made = ""
        for _ in range(args.runs):
            for old in (home / "backups").glob("*"):
                old.unlink()
            backups.append(timed(lambda: hostctl(home, "provision-backup", "@bench.example")))
            made = next((home / "backups").glob("*.tar.zst")).name
            floors.append(shell(floor_backup, pg_env))
        for _ in range(args.runs):
            restores.append(timed(lambda: hostctl(home, "provision-restore",
                                                  "@bench.example", "--file", made)))
            restore_floors.append(shell(floor_backup, pg_env)
                                  + shell(floor_restore, admin_env))
        archive = (home / "backups" / made).stat().st_size
        data = files_bytes + dump_bytes

        def row(values: list[float], floor: list[float]) -> dict[str, float]:
            med, fmed = statistics.median(values), statistics.median(floor)
            return {"median_s": round(med, 2), "floor_median_s": round(fmed, 2),
                    "ratio": round(med / fmed, 2), "mb_per_s": round(data / med / 1e6, 1),
                    "floor_mb_per_s": round(data / fmed / 1e6, 1)}

        results = {"files_mb": round(files_bytes / 1e6, 1),
                   "dump_mb": round(dump_bytes / 1e6, 1),
                   "archive_mb": round(archive / 1e6, 1), "runs": args.runs,
                   "backup": row(backups, floors), "restore": row(restores, restore_floors)}
    finally:
        pg.stop()
        shutil.rmtree(www, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
