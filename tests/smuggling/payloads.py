"""
The payload generator: families of request streams built from the classes of
mutation that smuggling scanners, differential HTTP fuzzers and other
proxies' framing regression tests use (obfuscated Transfer-Encoding,
Content-Length variants, both together, chunk-size and chunk-extension
oddities, obs-fold, bad bytes in names, values and targets, line endings,
Host and absolute-form disagreements, pipelining, HTTP/1.0 and 0.9, Expect,
Upgrade), plus a systematic byte-level mutation of seed streams.

Everything is deterministic: the same list, in the same order, every run.
Payloads that the reference reads as incomplete (they would leave a server
waiting for more bytes) are left out; every other payload is kept, whether
the reference accepts or refuses it.

C{python -m tests.smuggling.payloads} prints the families and their sizes.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import attr

from tests.smuggling import reference

HOST = b"Host: example.test"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n"
BODY = b"hello"
CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"


@attr.s(frozen=True, auto_attribs=True)
class Payload:
    family: str
    name: str
    data: bytes


def request(
    lines: Sequence[bytes] = (HOST,),
    method: bytes = b"POST",
    target: bytes = b"/",
    version: bytes = b"HTTP/1.1",
    body: bytes = b"",
) -> bytes:
    """A request from its parts, every line ended with CRLF."""
    head = [method + b" " + target + b" " + version] + list(lines)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _cl(n: int) -> bytes:
    return b"Content-Length: %d" % n


def _show(data: bytes) -> str:
    return repr(data)[2:-1]


# Bytes that are interesting anywhere: all controls, DEL, SP, obs-text.
CONTROLS = [bytes([b]) for b in list(range(0x00, 0x20)) + [0x7F]]
ODD_BYTES = CONTROLS + [b" ", b"\x80", b"\xa0", b"\xff"]
NON_TOKEN = [bytes([b]) for b in b'"(),/:;<=>?@[\\]{}'] + ODD_BYTES


# -- Transfer-Encoding -------------------------------------------------------

TE_NAMES = [
    b"Transfer-Encoding",
    b"transfer-encoding",
    b"TRANSFER-ENCODING",
    b"tRaNsFeR-eNcOdInG",
    b"Transfer-Encoding ",
    b"Transfer-Encoding\t",
    b" Transfer-Encoding",
    b"Transfer_Encoding",
    b"Transfer-Encodings",
    b"XTransfer-Encoding",
    b"Transfer-Encoding\x0b",
    b"Transfer\x00-Encoding",
]

TE_VALUES = [
    b"chunked",
    b"Chunked",
    b"CHUNKED",
    b"cHuNkEd",
    b" chunked",
    b"  chunked",
    b"\tchunked",
    b"chunked ",
    b"chunked\t",
    b"chunked\x0b",
    b"\x0bchunked",
    b"chunked\x0c",
    b"\x0cchunked",
    b"chunked\x00",
    b"chunked\x01",
    b"chunked\x1f",
    b"chunked\x7f",
    b"chunked\xff",
    b"\xa0chunked",
    b"chunked\xa0",
    b'"chunked"',
    b"'chunked'",
    b"chunked, identity",
    b"identity, chunked",
    b"chunked, chunked",
    b"chunked,chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"deflate",
    b"identity",
    b"chunked;q=1",
    b"chunked ;",
    b"chunk",
    b"chunked1",
    b"xchunked",
    b"chunked-false",
    b"chunked,",
    b", chunked",
    b",chunked,",
    b"ch unked",
    b"ch\x00unked",
    b"",
    b"x",
    b"chunked\r",
    b"\rchunked",
]


def _te_layouts(te_line: bytes) -> Iterator[Tuple[str, bytes]]:
    # TE alone, a whole chunked body, then a second request.
    yield "te", request([HOST, te_line], body=CHUNKED_BODY) + SMUGGLED
    # CL.TE: the length covers a terminator and a request prefix.
    body = b"0\r\n\r\n" + SMUGGLED
    yield "cl.te", request([HOST, _cl(len(body)), te_line], body=body)
    # TE.CL: a short length; a chunk that holds a request.
    inner = b"GET /smuggled HTTP/1.1\r\nX: "
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    yield "te.cl", request([HOST, _cl(4), te_line], body=body)


def te_obfuscation() -> Iterator[Tuple[str, bytes]]:
    for name in TE_NAMES:
        for value in TE_VALUES:
            line = name + b": " + value
            for layout, data in _te_layouts(line):
                yield f"{layout} {_show(line)}", data
    dupes = [b"chunked", b"identity", b"x", b"chunked ", b"Chunked", b""]
    for first in dupes:
        for second in dupes:
            lines = [b"Transfer-Encoding: " + first, b"Transfer-Encoding: " + second]
            yield (
                f"two TE {first!r} {second!r}",
                request([HOST] + lines, body=CHUNKED_BODY) + SMUGGLED,
            )
            body = b"0\r\n\r\n" + SMUGGLED
            yield (
                f"two TE + CL {first!r} {second!r}",
                request([HOST, _cl(len(body))] + lines, body=body),
            )


# -- Content-Length ----------------------------------------------------------

CL_VALUES = [
    b"5",
    b"05",
    b"0005",
    b"00000000000000000000005",
    b"+5",
    b"-5",
    b" 5",
    b"5 ",
    b"\t5",
    b"5\t",
    b"5\x0b",
    b"\x0b5",
    b"5\x0c",
    b"5\x00",
    b"5\x7f",
    b"0x5",
    b"0X05",
    b"5.0",
    b"5e0",
    b"5_",
    b"5 5",
    b"5,5",
    b"5, 5",
    b"5,6",
    b"5,",
    b",5",
    b"",
    b"five",
    b"5a",
    b"\xef\xbc\x95",  # a fullwidth digit five in UTF-8
    b"\xd9\xa5",  # an Arabic-Indic digit five
    b"0",
    b"-0",
    b"4294967301",  # 2**32 + 5
    b"18446744073709551621",  # 2**64 + 5
    b"99999999999999999999999999",
    b"1" * 40,
    b'"5"',
]

CL_NAMES = [
    b"Content-Length",
    b"content-length",
    b"CONTENT-LENGTH",
    b"Content-Length ",
    b"Content_Length",
    b"Content-Length\x0b",
]


def content_length() -> Iterator[Tuple[str, bytes]]:
    for name in CL_NAMES:
        for value in CL_VALUES:
            line = name + b": " + value
            yield _show(line), request([HOST, line], body=BODY + SMUGGLED)
    dupes = [b"0", b"5", b"05", b"6", b"5, 5", b"5,5"]
    for first in dupes:
        for second in dupes:
            lines = [b"Content-Length: " + first, b"Content-Length: " + second]
            yield f"two CL {first!r} {second!r}", request([HOST] + lines, body=BODY + SMUGGLED)
            lines = [b"Content-Length: " + first, b"content-length:" + second]
            yield (
                f"two CL, second lower {first!r} {second!r}",
                request([HOST] + lines, body=BODY + SMUGGLED),
            )


def cl_te() -> Iterator[Tuple[str, bytes]]:
    bodies = {
        "terminator first": b"0\r\n\r\n" + SMUGGLED,
        "chunk holds a request": b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
        "plain chunks": CHUNKED_BODY,
    }
    tes = [b"chunked", b" chunked", b"Chunked", b"chunked, identity", b"identity"]
    for body_name, body in bodies.items():
        for n in sorted({0, 3, 5, len(body) // 2, len(body)}):
            for te in tes:
                for order in ("CL first", "TE first"):
                    lines = [_cl(n), b"Transfer-Encoding: " + te]
                    if order == "TE first":
                        lines.reverse()
                    yield (
                        f"{body_name}, CL {n}, TE {te!r}, {order}",
                        request([HOST] + lines, body=body) + SMUGGLED,
                    )


# -- Chunked bodies ----------------------------------------------------------

CHUNK_SIZES = [
    b"5",
    b"05",
    b"0000000000000000000000005",
    b"0x5",
    b"0X5",
    b"x5",
    b"+5",
    b"-5",
    b" 5",
    b"5 ",
    b"\t5",
    b"5\t",
    b"5_",
    b"_5",
    b"0_5",
    b"5\x00",
    b"5\x0b",
    b"\x0b5",
    b"5\x0c",
    b"5\x7f",
    b"5\xff",
    b"5z",
    b"5g",
    b"g",
    b"",
    b"4",
    b"6",
    b"50",
    b"fffffffffffffffff5",
    b"10000000000000005",
    b"5 5",
    b"5,5",
    b"\xef\xbc\x95",
]

CHUNK_EXTENSIONS = [
    b";",
    b";ext",
    b"; ext",
    b" ;ext",
    b"\t;ext",
    b";ext=val",
    b";ext = val",
    b";ext=",
    b";=val",
    b';ext="quoted"',
    b';ext="q\\"uote"',
    b';ext="a b"',
    b';ext="unterminated',
    b";a=b;c=d",
    b";a=b;;",
    b";ext\x00",
    b";ext\x01",
    b";ext\x0b",
    b";ext\x7f",
    b";ext\xff",
    b";ext=\x80",
    b';ext="\x01"',
    b';ext="\x7f"',
    b";ext=a b",
    b";ext@",
    b";ext\tx",
    b";" + b"e" * 200,
]

CHUNK_DATA_ENDS = [b"\r\n", b"\n", b"\r", b"", b"XX", b" \r\n", b"\r\n\r\n", b"\r\r\n", b"\t\r\n"]

LAST_CHUNKS = [
    b"0",
    b"00",
    b"000000",
    b"0;x=y",
    b"0 ",
    b" 0",
    b"0x0",
    b"+0",
    b"-0",
    b"0\t",
    b"0;\x01",
    b"0\x00",
]

TRAILERS = [
    b"",
    b"X-Trailer: y\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: other.test\r\n",
    b"X-Trailer: y\r\n folded\r\n",
    b"X-Trailer : y\r\n",
    b"X-Trailer: a\x0bb\r\n",
    b"X\x00: y\r\n",
    b"X-Trailer: y\n",
    b"X-Trailer y\r\n",
    b"GET /x HTTP/1.1\r\n",
]


def _chunked(body: bytes) -> bytes:
    return request([HOST, b"Transfer-Encoding: chunked"], body=body) + SMUGGLED


def chunked() -> Iterator[Tuple[str, bytes]]:
    for size in CHUNK_SIZES:
        yield f"size {_show(size)}", _chunked(size + b"\r\nhello\r\n0\r\n\r\n")
    for ext in CHUNK_EXTENSIONS:
        yield f"extension {_show(ext)}", _chunked(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")
        yield f"last-chunk extension {_show(ext)}", _chunked(b"5\r\nhello\r\n0" + ext + b"\r\n\r\n")
    for end in CHUNK_DATA_ENDS:
        yield f"data end {_show(end)}", _chunked(b"5\r\nhello" + end + b"0\r\n\r\n")
    for last in LAST_CHUNKS:
        yield f"last chunk {_show(last)}", _chunked(b"5\r\nhello\r\n" + last + b"\r\n\r\n")
    for trailer in TRAILERS:
        yield f"trailer {_show(trailer)}", _chunked(b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n")
    for line_end in (b"\n", b"\r", b"\r\r\n", b"\n\r"):
        yield f"size line end {_show(line_end)}", _chunked(b"5" + line_end + b"hello\r\n0\r\n\r\n")
        yield f"last line end {_show(line_end)}", _chunked(b"5\r\nhello\r\n0" + line_end + b"\r\n")
        yield f"final end {_show(line_end)}", _chunked(b"5\r\nhello\r\n0\r\n" + line_end)
    many = b"".join(b"1\r\n%c\r\n" % c for c in b"hello world")
    yield "many one-byte chunks", _chunked(many + b"0\r\n\r\n")
    yield "empty chunked body", _chunked(b"0\r\n\r\n")
    yield "chunk holds a request", _chunked(b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED))


# -- Names, values, line endings, folding -------------------------------------


def header_names() -> Iterator[Tuple[str, bytes]]:
    for byte in NON_TOKEN:
        for where in ("before", "inside", "after"):

            def put(name: bytes, where: str = where, byte: bytes = byte) -> bytes:
                if where == "before":
                    return byte + name
                if where == "after":
                    return name + byte
                return name[:4] + byte + name[4:]

            yield (
                f"X-Test {where} {_show(byte)}",
                request([HOST, put(b"X-Test") + b": v", _cl(5)], body=BODY) + SMUGGLED,
            )
            body = b"0\r\n\r\n" + SMUGGLED
            yield (
                f"TE {where} {_show(byte)}",
                request(
                    [HOST, _cl(len(body)), put(b"Transfer-Encoding") + b": chunked"], body=body
                ),
            )
            yield (
                f"CL {where} {_show(byte)}",
                request([HOST, put(b"Content-Length") + b": 5"], body=BODY + SMUGGLED),
            )
    yield "empty name", request([HOST, b": v"])
    yield "colon only", request([HOST, b":"])
    yield "no colon", request([HOST, b"X-Test v"])
    yield "long name", request([HOST, b"X" * 300 + b": v"])


def header_values() -> Iterator[Tuple[str, bytes]]:
    for byte in ODD_BYTES:
        shown = _show(byte)
        for where, value in (
            ("alone", byte),
            ("before", byte + b"v"),
            ("inside", b"a" + byte + b"b"),
            ("after", b"v" + byte),
        ):
            yield f"X-Test {where} {shown}", request([HOST, b"X-Test: " + value])
        # The classic: a hidden framing header after a control byte.
        body = b"0\r\n\r\n" + SMUGGLED
        yield (
            f"hidden TE after {shown}",
            request(
                [HOST, _cl(len(body)), b"X: X" + byte + b"Transfer-Encoding: chunked"], body=body
            ),
        )
        yield (
            f"hidden CL after {shown}",
            request([HOST, b"X: X" + byte + b"Content-Length: 5"], body=BODY + SMUGGLED),
        )
        yield f"Host with {shown}", request([b"Host: example.test" + byte])
        yield f"User-Agent with {shown}", request([HOST, b"User-Agent: a" + byte + b"b"])
        yield f"Cookie with {shown}", request([HOST, b"Cookie: a=1" + byte + b"; b=2"])
    yield "obs-text value", request([HOST, b"X-Test: caf\xc3\xa9"])
    yield "empty value", request([HOST, b"X-Test:"])
    yield "only spaces", request([HOST, b"X-Test:    "])


def line_endings() -> Iterator[Tuple[str, bytes]]:
    template = (
        request([HOST, _cl(5)], body=BODY)
        + request([HOST, b"Transfer-Encoding: chunked"], body=CHUNKED_BODY)
        + request([HOST], method=b"GET")
    )
    ends = []
    start = 0
    while True:
        i = template.find(b"\r\n", start)
        if i < 0:
            break
        ends.append(i)
        start = i + 2
    for n, i in enumerate(ends):
        for replacement in (b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\r"):
            data = template[:i] + replacement + template[i + 2 :]
            yield f"line end {n} as {_show(replacement)}", data
    yield "all LF", template.replace(b"\r\n", b"\n")
    yield "all CR", template.replace(b"\r\n", b"\r")
    yield "LF LF ends the head", b"GET / HTTP/1.1\r\nHost: example.test\n\nGET /second HTTP/1.1\r\n"


def obs_fold() -> Iterator[Tuple[str, bytes]]:
    folds = [b"\r\n ", b"\r\n\t", b"\r\n  \t", b"\r\n\x0b"]
    for fold in folds:
        f = _show(fold)
        yield f"X-Test folded {f}", request([HOST, b"X-Test: a" + fold + b"b"])
        body = b"0\r\n\r\n" + SMUGGLED
        yield (
            f"TE folded {f}",
            request([HOST, _cl(len(body)), b"Transfer-Encoding:" + fold + b"chunked"], body=body),
        )
        yield (
            f"TE list folded {f}",
            request(
                [HOST, _cl(len(body)), b"Transfer-Encoding: identity" + fold + b",chunked"],
                body=body,
            ),
        )
        yield (
            f"CL folded {f}",
            request([HOST, b"Content-Length:" + fold + b"5"], body=BODY + SMUGGLED),
        )
        yield f"Host folded {f}", request([b"Host: example" + fold + b".test"])
        yield f"first line folded {f}", request([fold[2:] + b"X-Test: a", HOST])
        yield f"fold after request line {f}", b"GET / HTTP/1.1" + fold + b"Host: x\r\n\r\n"


# -- Request line --------------------------------------------------------------

METHODS = [
    b"GET",
    b"get",
    b"Get",
    b"POST",
    b"PUT",
    b"DELETE",
    b"PATCH",
    b"OPTIONS",
    b"TRACE",
    b"HEAD",
    b"PROPFIND",
    b"X-CUSTOM",
    b"G\x00ET",
    b"GE(T",
    b"GET/",
    b"GET:",
    b"\x16\x03\x01",
    b"PRI",
    b"M" * 100,
    b"",
]

VERSIONS = [
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/1.2",
    b"HTTP/1.9",
    b"HTTP/2.0",
    b"HTTP/3",
    b"HTTP/0.9",
    b"http/1.1",
    b"HTTP/1",
    b"HTTP/01.1",
    b"HTTP/1.10",
    b"HTTP/1.1 ",
    b"HTTP/1.1\t",
    b"HTTP/1.1\x00",
    b"HTTP/ 1.1",
    b"HTTPS/1.1",
    b"",
]

TARGET_SPECIALS = [bytes([b]) for b in b'"<>\\^`{|}#%[]'] + [b"%00", b"%0d%0a", b"%2f", b"%zz"]


def request_line() -> Iterator[Tuple[str, bytes]]:
    for method in METHODS:
        yield f"method {_show(method)}", request([HOST], method=method) + SMUGGLED
    for version in VERSIONS:
        yield f"version {_show(version)}", request([HOST], method=b"GET", version=version)
        yield (
            f"version {_show(version)} with body",
            request([HOST, _cl(5)], version=version, body=BODY) + SMUGGLED,
        )
    for byte in ODD_BYTES + TARGET_SPECIALS:
        shown = _show(byte)
        yield f"target /{shown}", request([HOST], method=b"GET", target=b"/" + byte)
        yield f"target /a{shown}b", request([HOST], method=b"GET", target=b"/a" + byte + b"b")
        yield f"target query {shown}", request([HOST], method=b"GET", target=b"/?q=" + byte)
    for line in (
        b"GET  / HTTP/1.1",
        b"GET /  HTTP/1.1",
        b"GET\t/ HTTP/1.1",
        b"GET /\tHTTP/1.1",
        b" GET / HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b"GET /",
        b"GET",
        b"GET / HTTP/1.1 extra",
        b"GET /a b HTTP/1.1",
        b"GET\x0b/ HTTP/1.1",
        b"GET /\x00 HTTP/1.1",
    ):
        yield f"line {_show(line)}", line + b"\r\n" + HOST + b"\r\n\r\n"
    for method, target in (
        (b"OPTIONS", b"*"),
        (b"GET", b"*"),
        (b"OPTIONS", b"*x"),
        (b"GET", b"example.test:80"),
        (b"CONNECT", b"example.test:443"),
        (b"GET", b"//example.test/"),
        (b"GET", b"http:/x"),
        (b"GET", b"HTTP://EXAMPLE.TEST/"),
        (b"GET", b"http://example.test"),
        (b"GET", b"http://example.test?q"),
        (b"GET", b"https://example.test/"),
        (b"GET", b"file:///etc/passwd"),
        (b"GET", b"ftp://example.test/"),
        (b"GET", b"?q"),
        (b"GET", b"x"),
        (b"GET", b"/" + b"a" * 4000),
    ):
        yield f"{_show(method)} {_show(target)}", request([HOST], method=method, target=target)


# -- Host and absolute form ----------------------------------------------------

HOST_VALUES = [
    b"example.test",
    b"EXAMPLE.test",
    b"example.test:8080",
    b"example.test:",
    b"example.test:80a",
    b"example.test:-1",
    b"example.test:+80",
    b"example.test: 80",
    b"example.test:80:80",
    b"example.test:99999999999999999999",
    b"127.0.0.1",
    b"127.0.0.1:80",
    b"[::1]",
    b"[::1]:80",
    b"[::1",
    b"::1",
    b"[not-ipv6]",
    b"",
    b" ",
    b":80",
    b"user@example.test",
    b"example.test/path",
    b"example.test?q",
    b"example.test#f",
    b"example test",
    b"example.test,other.test",
    b"exa%41mple.test",
    b"exa%4mple.test",
    b"exa_mple.test",
    b'"example.test"',
    b"<example.test>",
    b"example.test\\",
    b"caf\xc3\xa9.test",
    b"example.test\x7f",
    b"\x0bexample.test",
    b"http://example.test",
    b"a" * 300,
]


def host() -> Iterator[Tuple[str, bytes]]:
    for value in HOST_VALUES:
        shown = _show(value)
        yield f"Host {shown!r}", request([b"Host: " + value], method=b"GET")
        yield (
            f"HTTP/1.0 Host {shown!r}",
            request([b"Host: " + value], method=b"GET", version=b"HTTP/1.0"),
        )
        yield (
            f"Host {shown!r} with body",
            request([b"Host: " + value, _cl(5)], body=BODY) + SMUGGLED,
        )
    yield "no Host", request([], method=b"GET")
    yield "no Host, HTTP/1.0", request([], method=b"GET", version=b"HTTP/1.0")
    for first, second in (
        (b"example.test", b"example.test"),
        (b"example.test", b"other.test"),
        (b"example.test", b""),
        (b"", b"example.test"),
    ):
        lines = [b"Host: " + first, b"Host: " + second]
        yield f"two Host {first!r} {second!r}", request(lines, method=b"GET")
        yield (
            f"two Host {first!r} {second!r}, second lower",
            request([lines[0], b"host: " + second], method=b"GET"),
        )
    yield "Host list", request([b"Host: example.test, other.test"], method=b"GET")
    absolute = [
        (b"http://example.test/", b"example.test"),
        (b"http://example.test/", b"EXAMPLE.TEST"),
        (b"http://example.test/", b"other.test"),
        (b"http://example.test:8080/", b"example.test"),
        (b"http://other.test/admin", b"example.test"),
        (b"https://example.test/", b"other.test"),
        (b"http://example.test/", None),
        (b"http://example.test/", b""),
        (b"http://user@example.test/", b"example.test"),
        (b"http:///", b"example.test"),
        (b"http://exa mple.test/", b"example.test"),
        (b"http://example.test:x/", b"example.test"),
        (b"http://[::1]/", b"[::1]"),
        (b"http://[::1]/", b"example.test"),
        (b"http://example.test?q", b"other.test"),
    ]
    for target, value in absolute:
        lines = [] if value is None else [b"Host: " + value]
        name = f"absolute {_show(target)} Host {value!r}"
        yield name, request(lines, method=b"GET", target=target)
        yield name + " with body", request(lines + [_cl(5)], target=target, body=BODY) + SMUGGLED


# -- Streams of several requests -----------------------------------------------

PIECES = {
    "GET": request([HOST], method=b"GET", target=b"/get"),
    "POST-CL": request([HOST, _cl(5)], target=b"/post-cl", body=BODY),
    "POST-chunked": request(
        [HOST, b"Transfer-Encoding: chunked"], target=b"/post-chunked", body=CHUNKED_BODY
    ),
    "HEAD": request([HOST], method=b"HEAD", target=b"/head"),
    "close": request([HOST, b"Connection: close"], method=b"GET", target=b"/close"),
    "1.0": request([HOST], method=b"GET", target=b"/ten", version=b"HTTP/1.0"),
    "1.0-keep-alive": request(
        [HOST, b"Connection: keep-alive"], method=b"GET", target=b"/ten-ka", version=b"HTTP/1.0"
    ),
    "OPTIONS-*": request([HOST], method=b"OPTIONS", target=b"*"),
    "bad": request([HOST, b"Content-Length: 5, 6"], target=b"/bad", body=BODY),
}


def pipelining() -> Iterator[Tuple[str, bytes]]:
    names = list(PIECES)
    for a in names:
        for b in names:
            yield f"{a} then {b}", PIECES[a] + PIECES[b]
    for a in ("GET", "POST-CL", "POST-chunked"):
        for b in ("GET", "bad", "close"):
            for c in ("GET", "POST-chunked"):
                yield f"{a} then {b} then {c}", PIECES[a] + PIECES[b] + PIECES[c]
    yield "ten GETs", PIECES["GET"] * 10
    yield "CRLFs between requests", PIECES["GET"] + b"\r\n\r\n" + PIECES["GET"]
    yield "CRLF before the first", b"\r\n" + PIECES["GET"]
    yield "LF between requests", PIECES["GET"] + b"\n" + PIECES["GET"]
    inner = PIECES["POST-CL"]
    yield "request in a CL body", request([HOST, _cl(len(inner))], body=inner) + PIECES["GET"]
    yield (
        "request in a chunk",
        request(
            [HOST, b"Transfer-Encoding: chunked"],
            body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner),
        )
        + PIECES["GET"],
    )
    yield (
        "GET with a body hiding a request",
        request([HOST, _cl(len(SMUGGLED))], method=b"GET", body=SMUGGLED) + PIECES["GET"],
    )
    yield (
        "HEAD with a body hiding a request",
        request([HOST, _cl(len(SMUGGLED))], method=b"HEAD", body=SMUGGLED) + PIECES["GET"],
    )


def http10() -> Iterator[Tuple[str, bytes]]:
    yield "0.9 simple request", b"GET /\r\n"
    yield "0.9 simple request, blank line", b"GET /\r\n\r\n"
    yield "0.9 then 1.1", b"GET /\r\n" + PIECES["GET"]
    for lines, body in (
        ([], b""),
        ([HOST], b""),
        ([HOST, _cl(5)], BODY),
        ([HOST, b"Transfer-Encoding: chunked"], CHUNKED_BODY),
        ([HOST, b"Transfer-Encoding: chunked", _cl(5)], BODY),
        ([HOST, b"Connection: keep-alive", _cl(5)], BODY),
        ([HOST, b"Connection: keep-alive, close"], b""),
        ([HOST, b"Connection: Keep-Alive"], b""),
        ([HOST, b"Keep-Alive: timeout=5"], b""),
    ):
        name = "1.0 " + ", ".join(_show(x) for x in lines)
        yield name, request(lines, version=b"HTTP/1.0", body=body) + SMUGGLED


def expect() -> Iterator[Tuple[str, bytes]]:
    values = [
        b"100-continue",
        b"100-Continue",
        b"100-CONTINUE",
        b" 100-continue",
        b"100-continue, foo",
        b"foo",
        b"",
        b"100-continue\x0b",
        b"100-continuex",
        b"200-ok",
    ]
    for value in values:
        line = b"Expect: " + value
        shown = _show(value)
        yield f"{shown} CL", request([HOST, line, _cl(5)], body=BODY) + SMUGGLED
        yield (
            f"{shown} chunked",
            request([HOST, line, b"Transfer-Encoding: chunked"], body=CHUNKED_BODY) + SMUGGLED,
        )
        yield f"{shown} no body", request([HOST, line], method=b"GET") + SMUGGLED
    yield (
        "two Expect",
        request([HOST, b"Expect: 100-continue", b"Expect: 100-continue", _cl(5)], body=BODY),
    )
    body = b"0\r\n\r\n" + SMUGGLED
    yield (
        "Expect with CL and TE",
        request(
            [HOST, b"Expect: 100-continue", _cl(len(body)), b"Transfer-Encoding: chunked"],
            body=body,
        ),
    )


def upgrade() -> Iterator[Tuple[str, bytes]]:
    h2c = [b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"]
    yield (
        "h2c upgrade",
        request([HOST, b"Connection: Upgrade, HTTP2-Settings"] + h2c, method=b"GET") + SMUGGLED,
    )
    yield "h2c upgrade without Connection", request([HOST] + h2c, method=b"GET") + SMUGGLED
    yield (
        "h2c upgrade with a body",
        request([HOST, b"Connection: Upgrade, HTTP2-Settings", _cl(5)] + h2c, body=BODY) + SMUGGLED,
    )
    yield (
        "websocket upgrade",
        request(
            [
                HOST,
                b"Connection: Upgrade",
                b"Upgrade: websocket",
                b"Sec-WebSocket-Version: 13",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ],
            method=b"GET",
        )
        + SMUGGLED,
    )
    yield (
        "Connection: Upgrade alone",
        request([HOST, b"Connection: Upgrade"], method=b"GET") + SMUGGLED,
    )
    yield (
        "Upgrade: h2",
        request([HOST, b"Connection: Upgrade", b"Upgrade: h2"], method=b"GET") + SMUGGLED,
    )
    yield (
        "Upgrade with control byte",
        request([HOST, b"Connection: Upgrade", b"Upgrade: h2c\x0b"], method=b"GET") + SMUGGLED,
    )
    yield "HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    yield "HTTP/2 preface then 1.1", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + PIECES["GET"]


def connection() -> Iterator[Tuple[str, bytes]]:
    for value in (
        b"Content-Length",
        b"Transfer-Encoding",
        b"Host",
        b"X-Forwarded-For",
        b"Content-Length, close",
        b"keep-alive",
        b"close",
        b"Close",
        b"close, keep-alive",
        b"X-Test",
        b"",
        b",",
        b"close\x0b",
    ):
        line = b"Connection: " + value
        shown = _show(value)
        yield f"{shown} CL", request([HOST, line, _cl(5), b"X-Test: t"], body=BODY) + SMUGGLED
        yield (
            f"{shown} chunked",
            request([HOST, line, b"Transfer-Encoding: chunked"], body=CHUNKED_BODY) + SMUGGLED,
        )


# -- Byte-level mutation of seeds -------------------------------------------------

MUTATION_BYTES = [b"\x00", b"\t", b"\x0b", b" ", b"\r", b"\n", b"\x7f", b"\xff", b":", b","]


def _mutations(seed: bytes, limit: int) -> Iterator[Tuple[str, bytes]]:
    for i in range(min(len(seed), limit)):
        for byte in MUTATION_BYTES:
            yield f"insert {_show(byte)} at {i}", seed[:i] + byte + seed[i:]
        yield f"delete at {i}", seed[:i] + seed[i + 1 :]
        yield f"double at {i}", seed[:i] + seed[i : i + 1] + seed[i:]


def mutation_cl() -> Iterator[Tuple[str, bytes]]:
    seed = request([HOST, _cl(5), b"X-Test: v"], target=b"/a?b", body=BODY) + SMUGGLED
    return _mutations(seed, len(seed) - len(SMUGGLED))


def mutation_chunked() -> Iterator[Tuple[str, bytes]]:
    seed = (
        request([HOST, b"Transfer-Encoding: chunked"], body=b"5;e=v\r\nhello\r\n0\r\n\r\n")
        + SMUGGLED
    )
    return _mutations(seed, len(seed) - len(SMUGGLED))


GENERATORS = {
    "te-obfuscation": te_obfuscation,
    "content-length": content_length,
    "cl-te": cl_te,
    "chunked": chunked,
    "header-name": header_names,
    "header-value": header_values,
    "line-ending": line_endings,
    "obs-fold": obs_fold,
    "request-line": request_line,
    "host": host,
    "pipelining": pipelining,
    "http10": http10,
    "expect": expect,
    "upgrade": upgrade,
    "connection": connection,
    "mutation-cl": mutation_cl,
    "mutation-chunked": mutation_chunked,
}


def _unique(family: str, items: Iterable[Tuple[str, bytes]], seen: set) -> List[Payload]:
    out = []
    for name, data in items:
        if data in seen or reference.parse(data).incomplete:
            continue
        seen.add(data)
        out.append(Payload(family, name, data))
    return out


def corpus() -> Dict[str, List[Payload]]:
    """Every family's payloads, each stream once (the first family keeps it)."""
    seen: set = set()
    return {family: _unique(family, make(), seen) for family, make in GENERATORS.items()}


if __name__ == "__main__":
    total = 0
    for family, payloads in corpus().items():
        refused = sum(1 for p in payloads if reference.parse(p.data).refusal is not None)
        print(f"{family:18} {len(payloads):5}  ({refused} refused by the reference)")
        total += len(payloads)
    print(f"{'total':18} {total:5}")
