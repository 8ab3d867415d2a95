"""Certificates for local TLS servers, made by ``openssl`` when asked (never committed).

`make_certificates` writes a CA and a server certificate it signed for the loopback names
(``localhost``, ``127.0.0.1``): the CA is what a client trusts (``RACER_*_CA_FILE``), the
server's chain and key go to Redis, Kafka or the worker's own web server. A second,
unrelated CA (``other_ca``) is what an untrusted certificate looks like to a client.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from racer_online.local.processes import EmbeddedServiceError

LOOPBACK_NAMES = "DNS:localhost,IP:127.0.0.1"


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA certificate a client trusts
    cert: Path  # the server's certificate, signed by ``ca``
    key: Path  # its private key, unencrypted PKCS#8 (what Kafka's PEM key store reads)
    chain: Path  # the key, then the certificate: a PEM key store in one file
    other_ca: Path  # a CA that signed nothing here: a client trusting it refuses the server


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise EmbeddedServiceError("no openssl on PATH (apt-get install openssl)")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode:
        said = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise EmbeddedServiceError(f"openssl {args[0]} failed: {said}")


def _self_signed_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key.name, "-out", cert.name, "-days", "2",
             "-subj", f"/CN=racer-online {name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    return cert, key


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for the loopback names it signed, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _self_signed_ca(directory, "test-ca")
    other_ca, _ = _self_signed_ca(directory, "other-ca")
    key, request, cert = (
        directory / "server-key.pem",
        directory / "server.csr",
        directory / "server.pem",
    )
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key.name, "-out", request.name, "-subj", "/CN=localhost",
             cwd=directory)  # fmt: skip
    extensions = directory / "server.ext"
    extensions.write_text(
        f"subjectAltName={LOOPBACK_NAMES}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", request.name, "-CA", ca.name, "-CAkey", ca_key.name,
             "-CAcreateserial", "-out", cert.name, "-days", "2", "-extfile", extensions.name,
             cwd=directory)  # fmt: skip
    chain = directory / "server-chain.pem"
    chain.write_text(key.read_text() + cert.read_text())
    for secret in (ca_key, key, chain):
        secret.chmod(0o600)
    return Certificates(ca=ca, cert=cert, key=key, chain=chain, other_ca=other_ca)
