"""
lbproxy: an HTTP load-balancing reverse proxy on Twisted.

Run it with C{twistd -n lbproxy --config FILE}; check a configuration with
C{lbproxy check FILE}.
"""

__version__ = "0.1.0"
