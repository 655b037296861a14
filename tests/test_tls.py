"""
https:// backends: certificates are verified (authority and host name).
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, ssl

from tests.support import HOST, Backend, ProxyTestCase, proxy_config


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca() -> Tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("lbproxy test CA"))
        .issuer_name(_name("lbproxy test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, names: list
) -> Tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("backend"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem(obj: object) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


class TLSBackend(Backend):
    """A twisted.web backend on a TLS port with the given key and certificate."""

    def __init__(self, name: str, key: object, cert: x509.Certificate) -> None:
        super().__init__(name)
        self.port.stopListening()
        options = ssl.PrivateCertificate.loadPEM(pem(key) + pem(cert)).options()
        self.port = reactor.listenSSL(0, self.site, options, interface=HOST)
        self.url = f"https://{HOST}:{self.port.getHost().port}"


class TLSBackendTests(ProxyTestCase):
    def setUp(self) -> None:
        self.ca_key, self.ca = make_ca()
        self.ca_file = self.mktemp()
        with open(self.ca_file, "wb") as f:
            f.write(pem(self.ca))

    def tls_backend(self, names: list) -> TLSBackend:
        key, cert = make_server_cert(self.ca_key, self.ca, names)
        backend = TLSBackend("secure", key, cert)
        self.addCleanup(backend.stop)
        return backend

    def config(self, url: str, ca_file: bool = True) -> str:
        text = proxy_config([url])
        if ca_file:
            text += f"tls_ca_file = {self.ca_file}\n"
        return text

    @defer.inlineCallbacks
    def test_trusted_certificate_is_accepted(self):  # type: ignore[no-untyped-def]
        backend = self.tls_backend([x509.IPAddress(ipaddress.ip_address(HOST))])
        self.start_proxy(self.config(backend.url))
        r = yield self.fetch("GET", "/over-tls")
        self.assertEqual((r.status, r.body), (200, b"secure\n"))
        self.assertEqual(backend.seen[0].uri, b"/over-tls")

    @defer.inlineCallbacks
    def test_unknown_authority_is_refused(self):  # type: ignore[no-untyped-def]
        backend = self.tls_backend([x509.IPAddress(ipaddress.ip_address(HOST))])
        # No tls_ca_file: the system's authorities do not know the test CA.
        self.start_proxy(self.config(backend.url, ca_file=False))
        r = yield self.fetch()
        self.assertEqual(r.status, 502)
        self.assertEqual(r.body, b"502 Bad Gateway: no server could take the request\n")
        self.assertEqual(backend.seen, [])

    @defer.inlineCallbacks
    def test_wrong_host_name_is_refused(self):  # type: ignore[no-untyped-def]
        backend = self.tls_backend([x509.DNSName("other.example")])
        self.start_proxy(self.config(backend.url))
        r = yield self.fetch()
        self.assertEqual(r.status, 502)
        self.assertEqual(r.body, b"502 Bad Gateway: no server could take the request\n")
        self.assertEqual(backend.seen, [])
