"""
The twistd dropin: C{twistd lbproxy}.
"""

from twisted.application.service import ServiceMaker

lbproxy = ServiceMaker(
    "lbproxy",
    "lbproxy.tap",
    "HTTP load-balancing reverse proxy",
    "lbproxy",
)
