"""
The HTTP server side: client connections, the proxy's twisted.web site and
request, the request handler resource, streamed request bodies.
"""
