"""
The way to the servers: pools and server state, health checks, the backend
agent and the lifecycle of one forwarded request.
"""
