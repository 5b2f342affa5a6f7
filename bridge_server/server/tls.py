"""Remote mode's self-signed certificate: made once in the config folder, reused, identified by its SHA-256.

Generated with the `cryptography` package when it is installed, else with the `openssl` command line tool. The
private key is written 0600. Clients verify the certificate by comparing the fingerprint that `serve` prints.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

CERT_FILE, KEY_FILE = "cert.pem", "key.pem"


class TlsError(Exception):
    pass


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def subject_names(host: str, allowed: Sequence[str]) -> list[str]:
    names = ["localhost", "127.0.0.1"]
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    names += list(allowed)
    return list(dict.fromkeys(n for n in names if n))


def ensure_self_signed(folder: Path, names: Sequence[str]) -> tuple[Path, Path, bool]:
    """(cert, key, created). An existing pair in `folder` is reused so the fingerprint stays the same."""
    cert, key = folder / CERT_FILE, folder / KEY_FILE
    if cert.is_file() and key.is_file():
        return cert, key, False
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp_cert, tmp_key = Path(tmp) / CERT_FILE, Path(tmp) / KEY_FILE
        try:
            _with_cryptography(tmp_cert, tmp_key, names)
        except ImportError:
            _with_openssl(tmp_cert, tmp_key, names)
        os.chmod(tmp_key, 0o600)
        os.replace(tmp_key, key)
        os.replace(tmp_cert, cert)
    return cert, key, True


def _with_cryptography(cert: Path, key: Path, names: Sequence[str]) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1] if names else "ace-bridge")])
    alt = [x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names]
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(private, hashes.SHA256())
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _with_openssl(cert: Path, key: Path, names: Sequence[str]) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsError(
            "cannot make a self-signed certificate: install the 'cryptography' package "
            "(pip install cryptography) or the openssl command line tool, or give --tls-cert/--tls-key"
        )
    alt = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names)
    common = names[-1] if names else "ace-bridge"
    result = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "825",
            "-subj",
            f"/CN={common}",
            "-addext",
            f"subjectAltName={alt}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise TlsError(f"openssl could not make a certificate: {result.stderr.strip()[-500:]}")


def fingerprint_sha256(cert: Path) -> str:
    """'AB:CD:…' of the DER certificate, as browsers and `openssl x509 -fingerprint -sha256` show it."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text(encoding="ascii"))
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
