"""The in-process bus: the router, the EventChannel interface and Subscription, the sinks it
routes to, request/reply, ``since`` replays and retained values.

It knows nothing about networks. Its public names are exported by :mod:`trio_realtime`.
"""
