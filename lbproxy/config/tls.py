"""
TLS termination's configuration: the C{tls:} listener form, the
C{[tls:NAME]} sections, their certificate and key files, and which
certificate a server name (SNI) gets.

Pure: files are read and checked here (so that C{lbproxy check} reports a
key that does not match its certificate), but nothing of OpenSSL's contexts
or of the reactor; L{lbproxy.front.tls} turns a L{TLSConfig} into contexts.

A problem is a L{TLSProblem} naming the section and key; L{lbproxy.config}
turns it into its one-line error.
"""

from __future__ import annotations

import datetime
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import attr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

PrivateKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
]

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


class TLSProblem(ValueError):
    """
    A C{[tls:NAME]} section (or the C{tls:} listener) that cannot be used:
    the message completes "[section] key: ...".
    """

    def __init__(self, message: str, section: str, key: Optional[str]) -> None:
        super().__init__(message)
        self.section = section
        self.key = key


# ---------------------------------------------------------------------------
# The listener: tls:PORT[:interface=ADDRESS][:backlog=N]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class TLSListen:
    """Where a C{tls:} listener listens."""

    port: int
    interface: str = ""
    backlog: int = 50


def parse_tls_listen(description: str) -> TLSListen:
    """
    Parse C{tls:PORT[:interface=ADDRESS][:backlog=N]} (colons of an IPv6
    address escaped as C{\\:}, as in Twisted's endpoint descriptions).

    @raises ValueError: With a message that completes "[proxy] listen: ...".
    """
    parts = re.split(r"(?<!\\):", description)
    usage = (
        f"{description!r} is not a valid endpoint: write tls:PORT, optionally "
        f"followed by :interface=ADDRESS and :backlog=N"
    )
    if len(parts) < 2 or parts[0] != "tls" or not parts[1].isdigit():
        raise ValueError(usage)
    port = int(parts[1])
    if port > 65535:
        raise ValueError(f"{description!r}: the port must be a number from 0 to 65535")
    options: Dict[str, str] = {}
    for part in parts[2:]:
        key, sep, value = part.partition("=")
        if not sep or key not in ("interface", "backlog") or key in options:
            raise ValueError(usage)
        options[key] = value.replace("\\:", ":")
    backlog = options.get("backlog", "50")
    if not backlog.isdigit() or not 1 <= int(backlog) <= 65535:
        raise ValueError(f"{description!r}: backlog must be a number from 1 to 65535")
    return TLSListen(port, options.get("interface", ""), int(backlog))


def is_tls_listen(description: str) -> bool:
    return description.split(":", 1)[0] == "tls"


# ---------------------------------------------------------------------------
# [tls:NAME] sections


def parse_names(text: str) -> Tuple[str, ...]:
    """
    Host names, space separated: C{example.com}, or C{*.example.com} for any
    one label in its place.  Lower-cased; a trailing dot is dropped.
    """
    names = []
    for word in text.split():
        name = word.lower().rstrip(".")
        bare = name[2:] if name.startswith("*.") else name
        if not _HOST_NAME.match(bare) or len(bare) > 253:
            raise ValueError(
                f"{word!r} is not a host name (write example.com, or *.example.com "
                f"for one label in place of the *)"
            )
        if name in names:
            raise ValueError(f"{word!r} is listed twice")
        names.append(name)
    if not names:
        raise ValueError("needs at least one host name, or leave the key out")
    return tuple(names)


def parse_path(text: str) -> str:
    path = text.strip()
    if not path:
        raise ValueError("must be a file path")
    return path


@attr.s(frozen=True, slots=True, auto_attribs=True, eq=False)
class Certificate:
    """
    One C{[tls:NAME]} section, its files read and checked.

    @ivar section: The section's NAME.
    @ivar chain: The certificate, then the intermediates sent with it.
    @ivar names: The host names it serves (wildcards as C{*.example.com}).
    """

    section: str
    cert_path: str
    key_path: str
    chain: Tuple[x509.Certificate, ...]
    key: PrivateKey
    names: Tuple[str, ...]
    default: bool
    not_before: datetime.datetime
    not_after: datetime.datetime


@attr.s(frozen=True, slots=True, auto_attribs=True, eq=False)
class TLSConfig:
    """
    Every certificate of the C{tls:} listeners, the default one, and the
    warnings found while reading them (an expired certificate).
    """

    certificates: Tuple[Certificate, ...]
    default: Certificate
    warnings: Tuple[str, ...] = ()
    exact: Mapping[str, Certificate] = attr.Factory(dict)
    wildcard: Mapping[str, Certificate] = attr.Factory(dict)

    def choose(self, server_name: Optional[bytes]) -> Certificate:
        """
        The certificate for a TLS client's server name indication: the one
        listing the name, else one listing C{*.} and the name's parent (a
        wildcard stands for one label), else the default.  No name (or one
        that is not ASCII) gets the default.
        """
        if not server_name:
            return self.default
        try:
            name = server_name.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            return self.default
        found = self.exact.get(name)
        if found is not None:
            return found
        parent = name.partition(".")[2]
        if parent:
            found = self.wildcard.get(parent)
            if found is not None:
                return found
        return self.default


def _read(path: str, section: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSProblem(f"cannot read {path!r}: {e.strerror}", section, key) from None


def _blocks(data: bytes, kinds: Sequence[bytes]) -> List[bytes]:
    return [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1) in kinds]


def _load_chain(path: str, section: str) -> Tuple[x509.Certificate, ...]:
    data = _read(path, section, "cert")
    chain = []
    for block in _blocks(data, (b"CERTIFICATE",)):
        try:
            chain.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            raise TLSProblem(
                f"{path!r}: a certificate in it cannot be read", section, "cert"
            ) from None
    if not chain:
        raise TLSProblem(
            f"{path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", section, "cert"
        )
    return tuple(chain)


_KEY_KINDS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY")


def _load_key(path: str, section: str) -> PrivateKey:
    blocks = _blocks(_read(path, section, "key"), _KEY_KINDS)
    if not blocks:
        raise TLSProblem(
            f"{path!r} holds no PEM private key (-----BEGIN PRIVATE KEY-----)", section, "key"
        )
    if len(blocks) > 1:
        raise TLSProblem(f"{path!r} holds more than one private key", section, "key")
    try:
        key = serialization.load_pem_private_key(blocks[0], password=None)
    except TypeError:
        raise TLSProblem(
            f"the key in {path!r} is encrypted: lbproxy needs it without a passphrase "
            f"(readable by its user only)",
            section,
            "key",
        ) from None
    except Exception:  # cryptography raises several types for bad keys
        raise TLSProblem(f"the key in {path!r} cannot be read", section, "key") from None
    if not isinstance(
        key,
        (
            rsa.RSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
            dsa.DSAPrivateKey,
        ),
    ):
        raise TLSProblem(f"the key in {path!r} is of a kind TLS cannot use", section, "key")
    return key


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate_names(cert: x509.Certificate) -> Tuple[str, ...]:
    """
    The host names a certificate is for: its subjectAltName DNS names, or
    when it has none, its subject's common name (RFC 6125 section 6.4.4).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        dns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    else:
        dns = list(san.value.get_values_for_type(x509.DNSName))
    names: List[str] = []
    for value in dns:
        name = value.lower().rstrip(".")
        bare = name[2:] if name.startswith("*.") else name
        if _HOST_NAME.match(bare) and name not in names:
            names.append(name)
    return tuple(names)


def load_certificate(
    section: str, values: Mapping[str, object], now: datetime.datetime
) -> Tuple[Certificate, List[str]]:
    """
    Read and check one C{[tls:NAME]} section's files.

    @param section: The section's NAME.
    @param values: Its parsed keys: C{cert}, C{key}, C{names}, C{default}.
    @returns: The certificate, and warnings (each one line, "[tls:NAME] key: ...").
    @raises TLSProblem: When a file cannot be read, holds no certificate or
        key, or the key is not the certificate's.
    """
    where = f"tls:{section}"
    cert_path = str(values["cert"])
    key_path = str(values["key"] or cert_path)
    chain = _load_chain(cert_path, where)
    key = _load_key(key_path, where)
    if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        raise TLSProblem(
            f"the key in {key_path!r} does not match the certificate in {cert_path!r} "
            f"(the first certificate of the file must be the server's own)",
            where,
            "key",
        )
    leaf = chain[0]
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    warnings = []
    if not_after < now:
        warnings.append(
            f"[{where}] cert: the certificate in {cert_path!r} expired on "
            f"{not_after:%Y-%m-%d %H:%M} UTC: clients will refuse it"
        )
    elif not_before > now:
        warnings.append(
            f"[{where}] cert: the certificate in {cert_path!r} is not valid before "
            f"{not_before:%Y-%m-%d %H:%M} UTC: clients will refuse it"
        )
    names = values["names"]
    if names is None:
        names = certificate_names(leaf)
    certificate = Certificate(
        section=section,
        cert_path=cert_path,
        key_path=key_path,
        chain=chain,
        key=key,
        names=tuple(names),  # type: ignore[arg-type]
        default=bool(values["default"]),
        not_before=not_before,
        not_after=not_after,
    )
    return certificate, warnings


def build(
    sections: Sequence[Tuple[str, Mapping[str, object]]],
    now: Optional[datetime.datetime] = None,
) -> TLSConfig:
    """
    Read every C{[tls:NAME]} section (in file order) and decide which serves
    which name.  The default is the section saying C{default = yes}, else
    the first one.

    @raises TLSProblem: For the first problem found.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    certificates: List[Certificate] = []
    warnings: List[str] = []
    exact: Dict[str, Certificate] = {}
    wildcard: Dict[str, Certificate] = {}
    default: Optional[Certificate] = None
    for section, values in sections:
        certificate, found = load_certificate(section, values, now)
        warnings.extend(found)
        where = f"tls:{section}"
        if certificate.default:
            if default is not None and default.default:
                raise TLSProblem(
                    f"[tls:{default.section}] is the default already", where, "default"
                )
            default = certificate
        if not certificate.names and not certificate.default:
            raise TLSProblem(
                f"the certificate in {certificate.cert_path!r} names no host (no DNS name in "
                f"subjectAltName or the common name): list the names it serves, or make it "
                f"the default",
                where,
                "names",
            )
        for name in certificate.names:
            table, key = (wildcard, name[2:]) if name.startswith("*.") else (exact, name)
            other = table.get(key)
            if other is not None:
                raise TLSProblem(
                    f"{name} is served by [tls:{other.section}] already", where, "names"
                )
            table[key] = certificate
        certificates.append(certificate)
    if not certificates:
        raise ValueError("no [tls:NAME] section")
    if default is None:
        default = certificates[0]
    return TLSConfig(tuple(certificates), default, tuple(warnings), exact, wildcard)
