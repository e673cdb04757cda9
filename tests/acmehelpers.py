"""A real ACME CA on loopback: Debian's pebble (Let's Encrypt's test server) and its mock
DNS server, pebble-challtestsrv, which answers every name with 127.0.0.1, so that pebble
validates HTTP-01 challenges against the test nginx (pebble's ``httpPort``)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from provisionhelpers import free_port, stop_process, wait_port


@dataclass
class Pebble:
    base: Path
    port: int  # the ACME server (HTTPS)
    management: int  # its management API: /roots/0 is the root its certificates chain to
    dns: subprocess.Popen[bytes]
    proc: subprocess.Popen[bytes]

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def ca_bundle(self) -> Path:
        """The certificate pebble's own HTTPS is served with (what a client trusts)."""
        return self.base / "cert.pem"

    def root(self) -> str:
        """The root certificate (PEM) every certificate pebble issued chains to."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}/roots/0",
                                    context=context, timeout=30) as res:
            return str(res.read().decode())

    def root_file(self) -> Path:
        path = self.base / "root.pem"
        if not path.exists():
            path.write_text(self.root())
        return path

    def stop(self) -> None:
        for proc in (self.proc, self.dns):
            stop_process(proc)
        shutil.rmtree(self.base, ignore_errors=True)


def start_pebble(http_port: int) -> Pebble:
    """pebble validating HTTP-01 on ``http_port`` of 127.0.0.1, whatever the name."""
    pebble = shutil.which("pebble") or "/usr/bin/pebble"
    challtestsrv = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"
    if not (os.access(pebble, os.X_OK) and os.access(challtestsrv, os.X_OK)):
        pytest.skip("Debian's pebble package is not installed")
    base = Path(tempfile.mkdtemp(prefix="hostctl-pebble-"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
                    "-keyout", str(base / "key.pem"), "-out", str(base / "cert.pem"),
                    "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    dns_port, port, management = free_port(), free_port(), free_port()
    (base / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(base / "cert.pem"), "privateKey": str(base / "key.pem"),
        "httpPort": http_port, "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    quiet = {"stdin": subprocess.DEVNULL, "start_new_session": True}
    dns = subprocess.Popen([challtestsrv, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                            "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "",
                            "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"],
                           stdout=open(base / "dns.log", "wb"), stderr=subprocess.STDOUT,
                           **quiet)  # type: ignore[call-overload]
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
           "PEBBLE_AUTHZREUSE": "0"}
    proc = subprocess.Popen([pebble, "-config", str(base / "pebble.json"), "-dnsserver",
                             f"127.0.0.1:{dns_port}"], env=env,
                            stdout=open(base / "pebble.log", "wb"), stderr=subprocess.STDOUT,
                            **quiet)  # type: ignore[call-overload]
    server = Pebble(base, port, management, dns, proc)
    try:
        wait_port(port)
        wait_port(management)
    except AssertionError:
        log = (base / "pebble.log").read_text(errors="replace")
        server.stop()
        raise AssertionError(f"pebble did not start: {log}") from None
    return server
