"""
The twistd plugin's options and service maker: parse, validate, hand over.
"""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from lbproxy.config import ConfigError, ProxyConfig, load
from lbproxy.demo import check_demo, demo_services


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
        if self["config"] is None:
            raise usage.UsageError("--config FILE is required")
        try:
            self["proxy_config"] = load(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["demo"]:
            try:
                check_demo(self["proxy_config"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> service.IService:
    from lbproxy.service import ProxyService

    config: ProxyConfig = options["proxy_config"]
    proxy = ProxyService(config)
    if options["demo"]:
        for demo in demo_services(config):
            demo.setServiceParent(proxy)
    return proxy
