"""The broker: a bus exposed over WebSocket, one session per connected client, the limits.

Its public names (``Broker``, ``serve_broker``…) are exported by :mod:`trio_realtime`.
"""
