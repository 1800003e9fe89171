"""The manager's certificate authority (``cryptography``): a P-256 root made once by
``meter ssm init``, the HTTPS server certificate for the configured hostnames and addresses
(SANs), and the ID certificates it issues from a product instance's CSR (contract C, register).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
CA_YEARS = 10
SERVER_DAYS = 825
# Certificates start this long before "now": a peer whose clock is a little behind still accepts them.
BACKDATE = datetime.timedelta(hours=1)


class CAError(Exception):
    """A missing or unreadable CA file, or a CSR the manager will not certify; the message says which."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meter lab Smart Software Manager"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _utc(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         encipher_only=False, decipher_only=False)


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def create(cls, state_dir: Path, now: float) -> CertificateAuthority:
        """Make the root once; refuses to replace one (instances hold certificates it issued)."""
        if (state_dir / CA_KEY).exists():
            raise CAError(f"{state_dir / CA_KEY}: a CA already exists here")
        key = ec.generate_private_key(ec.SECP256R1())
        start = _utc(now) - BACKDATE
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("meter lab SSM root CA")).issuer_name(_name("meter lab SSM root CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(state_dir / CA_KEY, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (state_dir / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key)

    @classmethod
    def load(cls, state_dir: Path) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate((state_dir / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((state_dir / CA_KEY).read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise CAError(f"{exc.filename}: missing (run `meter ssm init --state {state_dir}`)") from None
        except ValueError as exc:
            raise CAError(f"{state_dir}: unreadable CA: {exc}") from None
        return cls(cert, key)

    def _leaf(self, subject: x509.Name, public_key, start: datetime.datetime, end: datetime.datetime):
        return (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )

    def issue_server(self, state_dir: Path, hostnames: list[str], now: float) -> tuple[Path, Path]:
        """A fresh server certificate for ``hostnames`` (DNS names and IP addresses), written to the
        state directory; made at each start so a changed ``hostnames`` takes effect."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        start = _utc(now) - BACKDATE
        cert = (
            self._leaf(_name(hostnames[0]), key.public_key(), start, start + datetime.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = state_dir / SERVER_CERT, state_dir / SERVER_KEY
        _write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def issue_id_cert(self, csr_pem: str, instance_id: str, now: float, expires_at: float) -> str:
        """The ID certificate of a product instance: the CSR's P-256 key, the instance id as the
        subject's common name, valid until ``expires_at`` (a year on the manager's scaled clock)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except (ValueError, TypeError) as exc:
            raise CAError(f"csr_pem is not a PEM certificate request: {exc}") from None
        if not csr.is_signature_valid:
            raise CAError("csr_pem: the request's self-signature does not verify")
        public_key = csr.public_key()
        # The protocol's signatures are ECDSA P-256 (contract C): a key of any other kind could never sign.
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise CAError("csr_pem: the key must be ECDSA P-256")
        start = _utc(now) - BACKDATE
        cert = (
            self._leaf(_name(instance_id), public_key, start, _utc(expires_at))
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()
