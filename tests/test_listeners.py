"""
lbproxy.listeners: an endpoint description to a listening port, and a port
that cannot be listened on as one line of error.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from lbproxy.config import ConfigError, parse
from lbproxy.front.tls import SNIConnectionCreator
from lbproxy.listeners import StartError, announce, listen

WHERE = "t.ini: [proxy] listen"


def factory() -> Factory:
    return Factory.forProtocol(Protocol)


class ListenTests(unittest.TestCase):
    def listen(self, description: str) -> IListeningPort:
        port = listen(reactor, description, factory(), WHERE, SNIConnectionCreator())
        self.addCleanup(port.stopListening)
        return port

    def test_tcp_on_port_zero_listens_and_names_its_port(self) -> None:
        port = self.listen("tcp:0:interface=127.0.0.1")
        address = port.getHost()
        self.assertEqual(address.host, "127.0.0.1")  # type: ignore[attr-defined]
        self.assertGreater(address.port, 0)  # type: ignore[attr-defined]

    def test_a_tls_listener_is_tls_over_tcp_with_the_sni_creator(self) -> None:
        """A tls: listener is TLS over TCP with the given creator (SNI)."""
        from twisted.internet.testing import MemoryReactor

        memory = MemoryReactor()
        creator = SNIConnectionCreator()
        given = factory()
        listen(memory, "tls:8443:interface=127.0.0.1:backlog=7", given, WHERE, creator)
        self.assertEqual(memory.tcpServers, [])
        [(port, served, contexts, backlog, interface)] = memory.sslServers
        self.assertEqual((port, backlog, interface), (8443, 7, "127.0.0.1"))
        self.assertIs(served, given)
        self.assertIs(contexts, creator)

    def test_announce_logs_the_address(self) -> None:
        port = self.listen("tcp:0:interface=127.0.0.1")
        with capturedLogs() as events:
            announce(port, "admin")
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["what"], "admin")
        self.assertEqual(event["address"], f"127.0.0.1:{port.getHost().port}")  # type: ignore[attr-defined]

    def assert_one_line(self, description: str, reason: str) -> None:
        with self.assertRaises(StartError) as caught:
            listen(reactor, description, factory(), WHERE, SNIConnectionCreator())
        text = str(caught.exception)
        self.assertNotIn("\n", text)
        self.assertTrue(text.startswith(f"{WHERE}: cannot listen on {description}: "), text)
        self.assertIn(reason, text)

    def test_a_busy_port_is_one_line(self) -> None:
        port = self.listen("tcp:0:interface=127.0.0.1")
        busy = f"tcp:{port.getHost().port}:interface=127.0.0.1"  # type: ignore[attr-defined]
        self.assert_one_line(busy, "Address already in use")

    def test_a_missing_systemd_socket_is_one_line(self) -> None:
        self.assert_one_line(
            "systemd:domain=INET:index=7", "systemd passed no socket at that index"
        )
        self.assert_one_line("systemd:domain=INET:name=web", "systemd passed no socket named 'web'")

    def test_a_unix_socket_in_a_missing_folder_is_one_line(self) -> None:
        self.assert_one_line("unix:/nonexistent-lbproxy-dir/proxy.sock", "No such file")

    def test_a_description_that_does_not_parse_never_reaches_listen(self) -> None:
        """
        An unknown endpoint type or a port that is no number is the
        configuration's error, one line naming the section and key; listen()
        only sees descriptions that parse.
        """
        for description in ("bogus:1", "tcp:notaport"):
            with self.assertRaises(ConfigError) as caught:
                parse(
                    f"[proxy]\nlisten = {description}\npool = p\n[pool:p]\nservers = http://a:1\n",
                    "t.ini",
                )
            text = str(caught.exception)
            self.assertNotIn("\n", text)
            self.assertIn("[proxy] listen", text)

    def test_a_description_listen_cannot_parse_is_one_line_too(self) -> None:
        self.assert_one_line("tcp:notaport", "notaport")
