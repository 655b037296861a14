"""
What an operator sees and drives: the admin listener, metrics, counters and
history, the access log, signals and service-manager notifications.
"""
