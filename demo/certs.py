"""The demo's own certificate authority, so its edges can be tried over HTTPS.

A demo is loopback-only and throw-away: a real CA cannot issue for www.test.com on
127.0.0.12. So the demo makes a CA in its work directory and a certificate for the
names its customers are reached by; `curl --cacert <work>/demo-ca.pem` trusts it
for exactly this demo, and nothing is installed system-wide. (Certificates for
customers created later come from ACME: `https: auto`, docs/edge.md.)
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TLS_PORT = 8443            # every demo edge's HTTPS port by default (--https-port; HTTP/3 on UDP)
VALID_DAYS = 7


@dataclass(frozen=True)
class DemoTLS:
    ca: Path                # what a client trusts
    cert: Path              # the edges' certificate chain
    key: Path
    names: tuple[str, ...]


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def demo_tls(work: Path, names: tuple[str, ...]) -> DemoTLS:
    """The CA and one certificate for `names` in `work` (made once per demo)."""
    ca_path, cert_path, key_path = work / "demo-ca.pem", work / "demo-edge.pem", \
        work / "demo-edge.key"
    found = DemoTLS(ca_path, cert_path, key_path, names)
    if ca_path.exists() and cert_path.exists() and key_path.exists():
        return found
    work.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    since, until = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("gslb demo CA (this demo only)")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(since).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(since).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(key, key_path, cert, cert_path)
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return found


def _write(key, key_path: Path, cert, cert_path: Path) -> None:
    """PEM files of a key (readable by its owner only) and its certificate."""
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def self_signed(work: Path, stem: str, address: str) -> tuple[Path, Path]:
    """A certificate for a loopback service's own HTTPS (the demo's ACME CA, pebble),
    trusted by naming the file itself: (cert, key) in `work`."""
    import ipaddress

    cert_path, key_path = work / f"{stem}.pem", work / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    work.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{stem} (this demo only)")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address)), x509.DNSName("localhost")]),
                critical=False)
            .sign(key, hashes.SHA256()))
    _write(key, key_path, cert, cert_path)
    return cert_path, key_path


def tls_block(tls: DemoTLS, bind: str) -> dict:
    """An edge config's `tls:` for the demo certificate on `bind` (HOST:PORT)."""
    return {"listen": [bind],
            "certificates": [{"names": list(tls.names), "cert": str(tls.cert),
                              "key": str(tls.key)}]}


def customer_names(raw: dict) -> tuple[str, ...]:
    """Every name the customers of an edge config (data/edge.yaml) are reached by."""
    names: list[str] = []
    for customer in raw.get("customers") or []:
        for name in customer.get("cnames") or []:
            if name not in names:
                names.append(name)
    return tuple(names)
