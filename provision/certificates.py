"""A site's HTTPS certificate: from an ACME CA through certbot, or the operator's own.

``ssl_enabled`` on a site gets it a certificate for its uri and aliases. Unless its
``ssl_key`` names an operator-provided certificate, it comes from the ACME CA of its web
server's ``ssl_acme_directory`` (Let's Encrypt by default), through ``certbot``: the
client the EFF keeps for Let's Encrypt, which operators know and Debian ships; it keeps the
ACME account, the keys and each certificate's lineage, and retries what the CA asks it
to. hostctl drives it as a program, never as root: ``certonly --webroot`` with its own
folders under ``HOME/acme`` (config/, work/, logs/; 0700). The HTTP-01 challenge is
answered by the site's own nginx: every vhost serves ``/.well-known/acme-challenge/`` from
the site's folder (``ROOT/sites/URI/.well-known/acme-challenge``, where certbot's webroot
plugin writes the token), on the site's names, redirection or not, before any redirect to
HTTPS. The certificate is ``HOME/acme/config/live/SITE/fullchain.pem`` with its
``privkey.pem`` (certbot's, 0600): nginx's master reads them as it loads its
configuration.

Renewal is the periodic ``ssl`` queue's: its task renews a certificate that expires within
the server's ``ssl_renew_days`` (or that no longer covers the site's names), and does
nothing else; install and verify get a certificate the site lacks.

An operator's certificate: ``HOME/ssl/NAME/fullchain.pem`` and ``privkey.pem`` (the key
0600), named by the site's ``ssl_key``. It is used only once its key matches it, it covers
every name of the site and it has not expired; otherwise the task fails saying which.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hostctl.errors import InvalidInput, OperationFailed
from hostctl.paths import Paths
from hostctl.provision.job import Job

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
CHALLENGE = ".well-known/acme-challenge"


@dataclass(frozen=True)
class Cert:
    fullchain: Path
    key: Path
    names: tuple[str, ...]
    not_after: datetime
    serial: str
    source: str  # "acme" or "operator"

    def days_left(self, now: datetime | None = None) -> float:
        return (self.not_after - (now or datetime.now(UTC))).total_seconds() / 86400

    def covers(self, names: list[str]) -> bool:
        return all(_covered(name, self.names) for name in names)


def _covered(name: str, sans: tuple[str, ...]) -> bool:
    if name in sans:
        return True
    head, _, rest = name.partition(".")
    return bool(rest) and f"*.{rest}" in sans


def acme_dir(paths: Paths) -> Path:
    return paths.home / "acme"


def operator_dir(paths: Paths, name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+@-]*", name):
        raise InvalidInput(f"ssl_key {name!r} is not a certificate's name")
    return paths.home / "ssl" / name


def read(job: Job, fullchain: Path, key: Path, source: str) -> Cert:
    """The certificate's names, end and serial (``openssl x509``)."""
    ran = job.run(["openssl", "x509", "-in", str(fullchain), "-noout", "-enddate", "-serial",
                   "-ext", "subjectAltName"], what=f"reading the certificate {fullchain}",
                  check=False)
    if ran.code != 0:
        raise OperationFailed(f"{fullchain} is not a PEM certificate")
    end = re.search(r"notAfter=(.+)", ran.output)
    serial = re.search(r"serial=([0-9A-Fa-f]+)", ran.output)
    if not end or not serial:
        raise OperationFailed(f"{fullchain}: no end date or serial in the certificate")
    not_after = datetime.strptime(end[1].strip(), "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    names = tuple(n.lower() for n in re.findall(r"DNS:([^,\s]+)", ran.output))
    return Cert(fullchain, key, names, not_after, serial[1].upper(), source)


def issued(job: Job, site: str) -> Cert | None:
    """The certificate certbot keeps for ``site`` (None: none yet)."""
    live = acme_dir(job.paths) / "config" / "live" / site
    fullchain, key = live / "fullchain.pem", live / "privkey.pem"
    if not (fullchain.exists() and key.exists()):
        return None
    return read(job, fullchain, key, "acme")


def operator(job: Job, name: str, names: list[str]) -> Cert:
    """The operator's certificate ``name``, checked: its key matches, it covers
    ``names``, it has not expired."""
    folder = operator_dir(job.paths, name)
    fullchain, key = folder / "fullchain.pem", folder / "privkey.pem"
    for path in (fullchain, key):
        if not path.is_file():
            raise InvalidInput(f"ssl_key {name}: {path} is missing")
    if os.stat(key).st_mode & 0o077:
        raise InvalidInput(f"ssl_key {name}: {key} may be read by others than its owner "
                           "(chmod 600 it)")
    cert = read(job, fullchain, key, "operator")
    public = job.run(["openssl", "x509", "-in", str(fullchain), "-noout", "-pubkey"],
                     what="the certificate's public key").output.strip()
    ran = job.run(["openssl", "pkey", "-in", str(key), "-pubout"],
                  what="the key's public half", check=False)
    if ran.code != 0 or ran.output.strip() != public:
        raise InvalidInput(f"ssl_key {name}: {key.name} is not the key of {fullchain.name}")
    missing = [n for n in names if not _covered(n, cert.names)]
    if missing:
        raise InvalidInput(f"ssl_key {name}: the certificate does not cover "
                           f"{', '.join(missing)} (it covers {', '.join(cert.names)})")
    if cert.days_left() <= 0:
        raise InvalidInput(f"ssl_key {name}: the certificate expired on "
                           f"{cert.not_after:%Y-%m-%d}")
    return cert


def certbot() -> str:
    found = shutil.which("certbot") or ("/usr/bin/certbot" if os.access("/usr/bin/certbot",
                                                                        os.X_OK) else None)
    if found is None:
        raise OperationFailed("certbot is not installed (Debian: apt install certbot)")
    return found


def issue(job: Job, site: str, names: list[str], webroot: Path, *, directory: str,
          email: str, ca_bundle: str = "", force: bool = False) -> Cert:
    """Get (or renew, with ``force``) the certificate of ``site`` for ``names`` from the
    ACME CA at ``directory``, answering HTTP-01 through ``webroot`` (which nginx serves
    at /.well-known/acme-challenge/ for every one of the names)."""
    base = acme_dir(job.paths)
    for sub in ("", "config", "work", "logs"):
        folder = base / sub
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    argv = [certbot(), "certonly", "--non-interactive", "--agree-tos", "--webroot",
            "--webroot-path", str(webroot), "--cert-name", site, "--server", directory,
            "--config-dir", str(base / "config"), "--work-dir", str(base / "work"),
            "--logs-dir", str(base / "logs"), "--preferred-challenges", "http",
            "--no-eff-email", "--max-log-backups", "10"]
    argv += ["--email", email] if email else ["--register-unsafely-without-email"]
    if force:
        argv.append("--force-renewal")
    for name in names:
        argv += ["--domains", name]
    env = {"REQUESTS_CA_BUNDLE": ca_bundle} if ca_bundle else {}
    job.say(f"asking {directory} for a certificate for {', '.join(names)}")
    ran = job.run(argv, what="certbot", env=env, check=False)
    if ran.code != 0:
        lines = [ln.strip() for ln in ran.output.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.startswith("Detail:")), "")
        reason = detail or next((ln for ln in reversed(lines)
                                 if not ln.startswith(("Ask for help", "See the logfile",
                                                       "Saving debug log", "Some challenges",
                                                       "Hint:", "-"))), "")
        raise OperationFailed(f"certbot could not get a certificate for {', '.join(names)}: "
                              f"{reason or f'exit status {ran.code}'}")
    cert = issued(job, site)
    if cert is None or not cert.covers(names):
        raise OperationFailed(f"certbot ended, but no certificate for {', '.join(names)} is "
                              f"in {base / 'config' / 'live' / site}")
    job.say(f"certificate for {', '.join(cert.names)} until {cert.not_after:%Y-%m-%d}")
    return cert


def forget(job: Job, site: str) -> None:
    """Remove certbot's lineage of ``site`` (its certificates and keys)."""
    base = acme_dir(job.paths)
    if not (base / "config" / "renewal" / f"{site}.conf").exists():
        return
    job.run([certbot(), "delete", "--non-interactive", "--cert-name", site,
             "--config-dir", str(base / "config"), "--work-dir", str(base / "work"),
             "--logs-dir", str(base / "logs")], what="certbot delete", check=False)
