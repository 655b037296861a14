"""
The twistd plugin's options and service maker: parse, validate, hand over.
"""

from __future__ import annotations

import sys

from twisted.application import service
from twisted.python import usage

from lbproxy.config import ConfigError, ProxyConfig, load
from lbproxy.demo import check_demo, demo_services


class ConfigRefused(usage.UsageError):
    """
    The configuration cannot be used; the text is the one line to show.
    """


class Options(usage.Options):
    """
    C{twistd lbproxy} options.
    """

    synopsis = "--config FILE [--demo]"
    longdesc = "Run the lbproxy HTTP load balancer with the configuration in FILE."

    optParameters = [
        ["config", "c", None, "The configuration file (INI)."],
    ]
    optFlags = [
        ["demo", None, "Also run built-in demo backends on the configured server addresses."],
    ]

    def postOptions(self) -> None:
        self._no_default_pidfile()
        if self["config"] is None:
            raise ConfigRefused("--config FILE is required")
        try:
            self["proxy_config"] = load(self["config"])
            if self["demo"]:
                check_demo(self["proxy_config"])
        except (ConfigError, ValueError) as e:
            raise ConfigRefused(str(e)) from None

    def _no_default_pidfile(self) -> None:
        """
        Under C{twistd -n} (in the foreground, where a service manager or a
        terminal keeps track of the process), write no C{twistd.pid} unless
        C{--pidfile} asks for one: twistd's default, C{twistd.pid} in the
        current directory, would stop a second instance started there.
        """
        parent = self.parent
        if parent is None or not parent.get("nodaemon"):
            return
        # twistd parses sys.argv; an explicit --pidfile is kept as given.
        given = any(arg == "--pidfile" or arg.startswith("--pidfile=") for arg in sys.argv[1:])
        if not given and parent.get("pidfile") == "twistd.pid":
            parent["pidfile"] = ""

    def parseOptions(self, options=None):  # type: ignore[no-untyped-def]
        """
        Parse the command line; a refused configuration ends the process.

        twistd answers a C{UsageError} with its whole usage text, and some
        Twisted releases then exit with status 0.  A configuration error is
        instead the one line that names the file, section and key, on
        stderr, and exit status 1, like C{lbproxy check}.
        """
        try:
            super().parseOptions(options)
        except ConfigRefused as e:
            print(e, file=sys.stderr)
            raise SystemExit(1) from None


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    from lbproxy.dispatch import install_quick_dispatch
    from lbproxy.ops.process import ProcessControl
    from lbproxy.service import ProxyService, StartError, settle_heap

    config: ProxyConfig = options["proxy_config"]
    if options.parent is not None:
        # Under twistd: start-up's heap out of the collector's sight once the
        # reactor runs (not when a test makes the service in its own process).
        reactor.callWhenRunning(settle_heap)
        install_quick_dispatch(reactor)  # one legacy log context per poll (dispatch.py)
    if config.workers > 1:
        # Worker processes (lbproxy.workers): this process supervises them.
        from lbproxy.workers.supervisor import SupervisorControl, SupervisorService

        try:
            supervisor = SupervisorService(config, options["config"], reactor)
        except StartError as e:
            raise SystemExit(str(e)) from None
        if options["demo"]:
            for demo in demo_services(config):
                demo.setServiceParent(supervisor)
        SupervisorControl(supervisor, options["config"], reactor).setServiceParent(supervisor)
        return supervisor
    try:
        proxy = ProxyService(config, reactor)
    except StartError as e:
        # A tls_ca_file that cannot be loaded: one line, exit status 1.
        raise SystemExit(str(e)) from None
    if options["demo"]:
        for demo in demo_services(config):
            demo.setServiceParent(proxy)
    ProcessControl(proxy, options["config"], reactor).setServiceParent(proxy)
    return proxy
