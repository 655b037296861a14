"""
TLS termination for many names: one tls: listener, certificates chosen by
SNI, reloaded without dropping connections; real sockets, Python's ssl
module and curl as clients, certificates made by the test.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import io
import os
import re
import shutil
import socket
import ssl
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from lbproxy import cli, config
from lbproxy.config.tls import parse_tls_listen
from lbproxy.ops.process import ProcessControl
from tests.support import CLIENT_TIMEOUT, HOST, ProxyTestCase, curl, proxy_config
from tests.test_tls import _name, make_ca, pem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAY = datetime.timedelta(days=1)


def make_leaf(
    ca_key: Any,
    ca: x509.Certificate,
    names: Sequence[str],
    not_before: Optional[datetime.datetime] = None,
    not_after: Optional[datetime.datetime] = None,
    common_name: str = "leaf",
) -> Tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate for the DNS C{names}, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - DAY)
        .not_valid_after(not_after or now + DAY)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class Client:
    """
    A blocking TLS client (Python's ssl module) on one connection; run its
    methods off the reactor thread.
    """

    def __init__(
        self,
        port: int,
        name: Optional[str],
        ca_file: str,
        check_hostname: bool = True,
        alpn: Optional[List[str]] = None,
        maximum: Optional[ssl.TLSVersion] = None,
        ciphers: Optional[str] = None,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca_file)
        context.check_hostname = check_hostname
        if alpn is not None:
            context.set_alpn_protocols(alpn)
        if maximum is not None:
            # The client's own OpenSSL must be willing to offer old versions,
            # or the server would never see them.
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.maximum_version = maximum
        if ciphers is not None:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(ciphers)
        raw = socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=name)
        except BaseException:
            raw.close()
            raise
        self.name = name or "unnamed.test"
        self.cert = self.sock.getpeercert(binary_form=True)
        self.version = self.sock.version()
        self.alpn = self.sock.selected_alpn_protocol()

    def get(self, path: str = "/") -> Tuple[int, bytes]:
        request = f"GET {path} HTTP/1.1\r\nHost: {self.name}\r\n\r\n"
        self.sock.sendall(request.encode("ascii"))
        response = http.client.HTTPResponse(self.sock)  # type: ignore[arg-type]
        response.begin()
        return response.status, response.read()

    def close(self) -> None:
        self.sock.close()


def connect(*args: Any, **kwargs: Any) -> defer.Deferred[Client]:
    return threads.deferToThread(Client, *args, **kwargs)


def one_request(*args: Any, **kwargs: Any) -> defer.Deferred[Tuple[Client, int, bytes]]:
    """Connect, GET /, close: the client (for its certificate) and the response."""

    def run() -> Tuple[Client, int, bytes]:
        client = Client(*args, **kwargs)
        try:
            status, body = client.get()
        finally:
            client.close()
        return client, status, body

    return threads.deferToThread(run)


class Certificates:
    """A CA and certificate files in a directory."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory)
        self.directory = directory
        self.ca_key, self.ca = make_ca()
        self.ca_file = self.write("ca.pem", pem(self.ca))
        self.certs: Dict[str, x509.Certificate] = {}

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def leaf(self, label: str, names: Sequence[str], chain: bool = False, **kw: Any) -> None:
        """Write LABEL.crt and LABEL.key for C{names}."""
        key, cert = make_leaf(self.ca_key, self.ca, names, **kw)
        self.certs[label] = cert
        self.write(f"{label}.crt", pem(cert) + (pem(self.ca) if chain else b""))
        self.write(f"{label}.key", pem(key))

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def section(self, label: str, extra: str = "") -> str:
        return (
            f"[tls:{label}]\ncert = {self.path(label + '.crt')}\n"
            f"key = {self.path(label + '.key')}\n{extra}"
        )


class TLSFrontTests(ProxyTestCase):
    def setUp(self) -> None:
        self.files = Certificates(os.path.abspath(self.mktemp()))
        # a: the default, for a.example.test and *.a.example.test;
        # b: b.example.test, sent with its CA (a chain of two).
        self.files.leaf("a", ["a.example.test", "*.a.example.test"])
        self.files.leaf("b", ["b.example.test"], chain=True)
        self.web = self.backend("web")

    def config_text(self, listen: str = f"tls:0:interface={HOST}") -> str:
        text = proxy_config([self.web.url]).replace(f"listen = tcp:0:interface={HOST}", "")
        text = text.replace("[proxy]\n", f"[proxy]\nlisten = {listen}\n")
        return text + self.files.section("a", "default = yes\n") + self.files.section("b")

    def client(
        self, name: Optional[str], **kwargs: Any
    ) -> defer.Deferred[Tuple[Client, int, bytes]]:
        return one_request(self.port, name, self.files.ca_file, **kwargs)

    @defer.inlineCallbacks
    def test_each_name_gets_its_certificate_and_the_backend_hears_https(self):  # type: ignore[no-untyped-def]
        self.start_proxy(self.config_text())
        for name, label in (
            ("a.example.test", "a"),
            ("B.Example.Test", "b"),
            ("www.a.example.test", "a"),
        ):
            client, status, body = yield self.client(name)
            self.assertEqual(client.cert, der(self.files.certs[label]), name)
            self.assertEqual((status, body), (200, b"web\n"))
            self.assertIn(client.version, ("TLSv1.2", "TLSv1.3"))
            seen = self.web.seen[-1]
            self.assertEqual(seen.header(b"x-forwarded-proto"), [b"https"])
            self.assertEqual(seen.header(b"host"), [name.encode()])

    @defer.inlineCallbacks
    def test_unknown_or_missing_name_gets_the_default(self):  # type: ignore[no-untyped-def]
        self.start_proxy(self.config_text())
        # A wildcard stands for one label: neither two nor none.
        for name in ("unknown.test", "x.y.a.example.test", "example.test", None):
            client, status, _ = yield self.client(name, check_hostname=False)
            self.assertEqual(client.cert, der(self.files.certs["a"]), name)
            self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_tls_1_1_and_old_ciphers_are_refused(self):  # type: ignore[no-untyped-def]
        self.start_proxy(self.config_text())
        for kwargs in (
            {"maximum": ssl.TLSVersion.TLSv1_1},
            {"maximum": ssl.TLSVersion.TLSv1},
            # CBC without AEAD, and no forward secrecy: not on the list.
            {"ciphers": "ECDHE-ECDSA-AES128-SHA"},
            {"ciphers": "AES128-GCM-SHA256"},
        ):
            with self.assertRaises(ssl.SSLError) as caught:
                yield self.client("a.example.test", **kwargs)
            # The server's alert, not the client refusing to offer it.
            self.assertRegex(str(caught.exception), r"(?i)alert|handshake failure", kwargs)
            self.assertEqual(self.web.seen, [])
        # The same client on TLS 1.2 with a listed cipher is served.
        client, status, _ = yield self.client(
            "a.example.test", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"
        )
        self.assertEqual((client.version, status), ("TLSv1.2", 200))

    @defer.inlineCallbacks
    def test_alpn_offers_http_1_1_only_when_http2_is_off(self):  # type: ignore[no-untyped-def]
        self.start_proxy(self.config_text().replace("[proxy]\n", "[proxy]\nhttp2 = off\n"))
        client, status, _ = yield self.client("a.example.test", alpn=["h2", "http/1.1"])
        self.assertEqual((client.alpn, status), ("http/1.1", 200))
        client, status, _ = yield self.client("a.example.test")
        self.assertEqual((client.alpn, status), (None, 200))
        with self.assertRaises(ssl.SSLError) as caught:
            yield self.client("a.example.test", alpn=["h2"])
        # A fatal alert: no_application_protocol (internal_error from the
        # OpenSSL 3.3 of PyPy's cryptography wheel).
        self.assertRegex(
            str(caught.exception), r"(?i)alert (no.application.protocol|internal.error)"
        )
        self.assertEqual(len(self.web.seen), 2)

    @defer.inlineCallbacks
    def test_reload_swaps_certificates_for_new_connections_only(self):  # type: ignore[no-untyped-def]
        text = self.config_text()
        path = self.files.write("lbproxy.ini", text.encode())
        self.start_proxy(text)
        old = self.files.certs["b"]
        held = yield connect(self.port, "b.example.test", self.files.ca_file)
        self.addCleanup(held.close)
        status, _ = yield threads.deferToThread(held.get, "/before")
        self.assertEqual(status, 200)
        # A renewed certificate in the same files, then SIGHUP's reload.
        self.files.leaf("b", ["b.example.test"])
        control = ProcessControl(self.proxy, path, reactor)
        control.reload()
        self.assertEqual(self.proxy.reloads, {"ok": 1, "refused": 0})
        client, status, _ = yield self.client("b.example.test")
        self.assertEqual((client.cert, status), (der(self.files.certs["b"]), 200))
        self.assertNotEqual(der(old), der(self.files.certs["b"]))
        # The connection opened before keeps its certificate and still works.
        status, body = yield threads.deferToThread(held.get, "/after")
        self.assertEqual((held.cert, status, body), (der(old), 200, b"web\n"))
        self.assertEqual([s.uri for s in self.web.seen][-1], b"/after")

    @defer.inlineCallbacks
    def test_refused_reload_keeps_the_running_certificates(self):  # type: ignore[no-untyped-def]
        text = self.config_text()
        path = self.files.write("lbproxy.ini", text.encode())
        self.start_proxy(text)
        served = self.files.certs["b"]
        # The certificate is replaced but the key is not: refused.
        key = self.files.path("b.key")
        with open(key, "rb") as f:
            old_key = f.read()
        self.files.leaf("b", ["b.example.test"])
        self.files.write("b.key", old_key)
        ProcessControl(self.proxy, path, reactor).reload()
        self.assertEqual(self.proxy.reloads, {"ok": 0, "refused": 1})
        client, status, _ = yield self.client("b.example.test")
        self.assertEqual((client.cert, status), (der(served), 200))

    @defer.inlineCallbacks
    def test_curl_gets_each_name_verified(self):  # type: ignore[no-untyped-def]
        self.assertIsNotNone(shutil.which("curl"), "curl is needed (scripts/test.sh installs it)")
        self.start_proxy(self.config_text())
        for name in ("a.example.test", "b.example.test", "www.a.example.test"):
            out, err, code = yield curl(
                "--resolve",
                f"{name}:{self.port}:{HOST}",
                "--cacert",
                self.files.ca_file,
                f"https://{name}:{self.port}/curl",
            )
            self.assertEqual((code, out), (0, b"web\n"), err)
            self.assertEqual(self.web.seen[-1].header(b"x-forwarded-proto"), [b"https"])

    @defer.inlineCallbacks
    def test_ssl_endpoint_with_one_certificate_still_works(self):  # type: ignore[no-untyped-def]
        listen = (
            f"ssl:0:interface={HOST}:privateKey={self.files.path('a.key')}"
            f":certKey={self.files.path('a.crt')}"
        )
        text = proxy_config([self.web.url]).replace(f"tcp:0:interface={HOST}", listen)
        self.start_proxy(text)
        client, status, _ = yield self.client("a.example.test")
        self.assertEqual((client.cert, status), (der(self.files.certs["a"]), 200))
        self.assertEqual(self.web.seen[-1].header(b"x-forwarded-proto"), [b"https"])

    @defer.inlineCallbacks
    def test_a_stalled_handshake_is_closed_after_keepalive_timeout(self):  # type: ignore[no-untyped-def]
        text = self.config_text().replace("[proxy]\n", "[proxy]\nkeepalive_timeout = 500ms\n")
        self.start_proxy(text)

        def stall() -> Tuple[bytes, float]:
            with socket.create_connection((HOST, self.port), timeout=CLIENT_TIMEOUT) as s:
                started = time.monotonic()
                s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and no more
                try:
                    data = s.recv(100)
                except ConnectionResetError:  # aborted: closed all the same
                    data = b""
                return data, time.monotonic() - started

        data, waited = yield threads.deferToThread(stall)
        self.assertEqual(data, b"")
        # Closed by the timeout, not at once.
        self.assertGreater(waited, 0.4)

    def test_plain_and_tls_listeners_side_by_side(self) -> None:
        text = self.config_text(f"tcp:0:interface={HOST}\n    tls:0:interface={HOST}")
        proxy = self.start_proxy(text)
        self.assertEqual(sorted(d.split(":")[0] for d in proxy.ports), ["tcp", "tls"])


class ConfigErrorTests(unittest.TestCase):
    """Each mistake is one line naming the section and key."""

    def setUp(self) -> None:
        self.files = Certificates(os.path.abspath(self.mktemp()))
        self.files.leaf("a", ["a.example.test"])
        self.files.leaf("b", ["b.example.test"])

    def text(self, tls: str, listen: str = "tls:8443") -> str:
        return f"[proxy]\nlisten = {listen}\n[pool:web]\nservers = http://127.0.0.1:9001\n" + tls

    def error(self, tls: str, **kwargs: Any) -> str:
        with self.assertRaises(config.ConfigError) as caught:
            config.parse(self.text(tls, **kwargs), "t.ini")
        line = str(caught.exception)
        self.assertNotIn("\n", line)
        self.assertNotIn("Traceback", line)
        return line

    def test_key_that_is_not_the_certificates(self) -> None:
        tls = f"[tls:a]\ncert = {self.files.path('a.crt')}\nkey = {self.files.path('b.key')}\n"
        self.assertRegex(
            self.error(tls),
            r"^t\.ini: \[tls:a\] key: the key in '.*/b\.key' does not match the certificate "
            r"in '.*/a\.crt'",
        )

    def test_missing_and_unreadable_files(self) -> None:
        missing = self.files.path("missing.pem")
        self.assertRegex(
            self.error(f"[tls:a]\ncert = {missing}\nkey = {self.files.path('a.key')}\n"),
            r"^t\.ini: \[tls:a\] cert: cannot read '.*/missing\.pem': No such file or directory$",
        )
        self.assertRegex(
            self.error(f"[tls:a]\ncert = {self.files.path('a.crt')}\nkey = {missing}\n"),
            r"^t\.ini: \[tls:a\] key: cannot read '.*/missing\.pem': No such file",
        )
        self.assertRegex(
            self.error(f"[tls:a]\ncert = {self.files.directory}\nkey = {missing}\n"),
            r"^t\.ini: \[tls:a\] cert: cannot read '.*': Is a directory$",
        )
        self.assertRegex(
            self.error(
                f"[tls:a]\ncert = {self.files.path('a.key')}\nkey = {self.files.path('a.key')}\n"
            ),
            r"^t\.ini: \[tls:a\] cert: '.*/a\.key' holds no PEM certificate",
        )
        self.assertRegex(
            self.error(f"[tls:a]\ncert = {self.files.path('a.crt')}\n"),
            r"^t\.ini: \[tls:a\] key: '.*/a\.crt' holds no PEM private key",
        )

    def test_encrypted_key(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        path = self.files.write("encrypted.key", encrypted)
        self.assertRegex(
            self.error(f"[tls:a]\ncert = {self.files.path('a.crt')}\nkey = {path}\n"),
            r"^t\.ini: \[tls:a\] key: the key in '.*' is encrypted",
        )

    def test_names_defaults_and_sections(self) -> None:
        a = self.files.section("a")
        b = self.files.section("b")
        self.assertEqual(
            self.error(a + "default = yes\n" + b + "default = yes\n"),
            "t.ini: [tls:b] default: [tls:a] is the default already",
        )
        self.assertEqual(
            self.error(a + "names = x.test *.x.test\n" + b + "names = *.X.test\n"),
            "t.ini: [tls:b] names: *.x.test is served by [tls:a] already",
        )
        self.assertEqual(
            self.error(a + "names = a..test\n"),
            "t.ini: [tls:a] names: 'a..test' is not a host name "
            "(write example.com, or *.example.com for one label in place of the *)",
        )
        self.assertEqual(
            self.error(a + "names = x.*.test\n").split(": ")[1:3],
            [
                "[tls:a] names",
                "'x.*.test' is not a host name (write example.com, or *.example.com for one label in place of the *)",
            ],
        )
        self.assertEqual(
            self.error(a + "name = a.test\n"),
            "t.ini: [tls:a] name: unknown key (did you mean names? known: cert, key, "
            "names, default)",
        )
        self.assertEqual(
            self.error("", listen="tls:8443"),
            "t.ini: [proxy] listen: tls:8443 needs a [tls:NAME] section with its certificate",
        )
        self.assertEqual(
            self.error(a, listen="tcp:8080"),
            "t.ini: [tls:a] no tls: listener in [proxy] listen serves this certificate",
        )
        self.assertEqual(
            self.error(a, listen="tls:8443:interfac=::1"),
            "t.ini: [proxy] listen: 'tls:8443:interfac=::1' is not a valid endpoint: write "
            "tls:PORT, optionally followed by :interface=ADDRESS and :backlog=N",
        )
        self.assertIn("did you mean [tls:a]?", self.error(a.replace("[tls:a]", "[tsl:a]")))

    def test_names_come_from_the_certificate(self) -> None:
        self.files.leaf("cn", [], common_name="cn.example.test")
        self.files.leaf("none", [], common_name="not a host name")
        parsed = config.parse(
            self.text(
                self.files.section("a")
                + self.files.section("cn")
                + self.files.section("none", "default = yes\n")
            )
        )
        assert parsed.tls is not None
        self.assertEqual(
            [(c.section, c.names) for c in parsed.tls.certificates],
            [("a", ("a.example.test",)), ("cn", ("cn.example.test",)), ("none", ())],
        )
        self.assertRegex(
            self.error(self.files.section("none")),
            r"^t\.ini: \[tls:none\] names: the certificate in '.*' names no host",
        )

    def test_sni_choice(self) -> None:
        parsed = config.parse(
            self.text(
                self.files.section("a", "names = a.test *.a.test\n")
                + self.files.section("b", "names = b.test\ndefault = yes\n")
            )
        )
        tls = parsed.tls
        assert tls is not None
        for name, section in (
            (b"a.test", "a"),
            (b"A.TEST.", "a"),
            (b"x.a.test", "a"),
            (b"x.y.a.test", "b"),
            (b"b.test", "b"),
            (b"other.test", "b"),
            (b"\xff.test", "b"),
            (None, "b"),
        ):
            self.assertEqual(tls.choose(name).section, section, name)
        # Without default = yes, the first section is the default.
        first = config.parse(self.text(self.files.section("a") + self.files.section("b"))).tls
        assert first is not None
        self.assertEqual(first.choose(b"other.test").section, "a")

    def test_listen_form(self) -> None:
        self.assertEqual(parse_tls_listen("tls:443").port, 443)
        listen = parse_tls_listen(r"tls:8443:interface=\:\:1:backlog=100")
        self.assertEqual((listen.port, listen.interface, listen.backlog), (8443, "::1", 100))
        for bad in ("tls:", "tls:x", "tls:70000", "tls:443:backlog=0", "tls:443:foo=1"):
            with self.assertRaises(ValueError):
                parse_tls_listen(bad)

    def test_admin_cannot_be_tls(self) -> None:
        text = (
            self.text(self.files.section("a")) + "[admin]\nlisten = tls:9443\ntoken = " + "t" * 20
        )
        with self.assertRaises(config.ConfigError) as caught:
            config.parse(text, "t.ini")
        self.assertEqual(
            str(caught.exception),
            "t.ini: [admin] listen: the admin listener cannot be tls: (use an ssl: endpoint)",
        )

    def check(self, text: str) -> Tuple[int, str, str]:
        path = self.files.write("check.ini", text.encode())
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["check", path])
        return code, out.getvalue(), err.getvalue()

    def test_expired_certificate_is_a_warning_that_check_reports(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.files.leaf("old", ["old.test"], not_before=now - 30 * DAY, not_after=now - DAY)
        code, out, err = self.check(self.text(self.files.section("old")))
        self.assertEqual(code, 0)
        self.assertIn(": ok: 1 listener, 1 pool, 1 server", out)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertRegex(
            err,
            r"check\.ini: warning: \[tls:old\] cert: the certificate in '.*/old\.crt' expired "
            r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC: clients will refuse it\n$",
        )

    def test_check_reports_a_mismatched_key_in_one_line(self) -> None:
        tls = f"[tls:a]\ncert = {self.files.path('a.crt')}\nkey = {self.files.path('b.key')}\n"
        code, out, err = self.check(self.text(tls))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("[tls:a] key: the key in", err)


class DocumentationTests(unittest.TestCase):
    def test_every_tls_key_is_in_the_example_file_and_the_readme(self) -> None:
        from lbproxy.config import _TLS_KEYS

        with open(os.path.join(REPO, "etc", "lbproxy.ini")) as f:
            example = f.read()
        with open(os.path.join(REPO, "README.md")) as f:
            readme = f.read()
        for key in _TLS_KEYS:
            self.assertRegex(example, rf"(?m)^;?{key} =", key)
            self.assertIn(f"| `[tls:NAME]` | `{key}` |", readme, key)
        self.assertTrue(re.search(r"(?m)^## TLS for several names$", readme))
