"""
Worker processes: the twistd process becomes a supervisor that binds every
listener once and starts C{[proxy] workers} processes that serve them.

 - L{lbproxy.workers.supervisor}: the supervisor's service (listeners held,
   not served; health checks, admin, signals, systemd) and the group of
   worker processes (start, restart with back-off, roll on reload, stop).
 - L{lbproxy.workers.worker}: the worker process (C{python -m
   lbproxy.workers.worker}): the proxy on adopted listening sockets.
 - L{lbproxy.workers.shared}: the state table every process maps, so that
   in-flight counts, health verdicts, ejections and operator actions are
   the group's, not one process's.
"""
