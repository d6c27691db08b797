"""The remote client: ``open_client``, its link (one connection) and the state that
survives reconnects (subscriptions to resume, the outbox, requests waiting for replies).

Its public names are exported by :mod:`trio_realtime`.
"""
