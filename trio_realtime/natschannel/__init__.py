"""The EventChannel straight over NATS: :func:`open_nats_channel` (or
:func:`trio_realtime.open_channel` with a ``nats://`` URL).

Events travel as NATS messages that any NATS client reads and writes (the CloudEvents NATS
binding: see :doc:`/transports`), with no trio_realtime broker in between; retained values
live in JetStream, and stored events in a store every channel shares. Needs the ``nats``
extra (``pip install 'trio-realtime[nats]'``).
"""

from .._nats_wire import DEFAULT_PREFIX as DEFAULT_PREFIX
from ._channel import NatsChannel as NatsChannel
from ._channel import NatsChannelStatistics as NatsChannelStatistics
from ._channel import open_nats_channel as open_nats_channel

__all__ = ["DEFAULT_PREFIX", "NatsChannel", "NatsChannelStatistics", "open_nats_channel"]
