"""trio_realtime: a Trio-native, structured-concurrency event bus, broker and client."""

from ._errors import ConnectionClosed as ConnectionClosed
from ._errors import DuplicateEventId as DuplicateEventId
from ._errors import EpochChanged as EpochChanged
from ._errors import HandshakeError as HandshakeError
from ._errors import InvalidTopic as InvalidTopic
from ._errors import LimitExceeded as LimitExceeded
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import NoResponders as NoResponders
from ._errors import PermissionDenied as PermissionDenied
from ._errors import ProtocolError as ProtocolError
from ._errors import RealtimeError as RealtimeError
from ._errors import Refused as Refused
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import RequestFailed as RequestFailed
from ._errors import SlowConsumer as SlowConsumer
from ._errors import StoreError as StoreError
from ._errors import StoreUnavailable as StoreUnavailable
from ._errors import TooLarge as TooLarge
from ._event import Event as Event
from ._open_channel import open_channel as open_channel
from ._payloads import event_type as event_type
from ._topics import topic_matches as topic_matches
from ._topics import validate_pattern as validate_pattern
from ._topics import validate_topic as validate_topic
from .broker._broker import Broker as Broker
from .broker._broker import BrokerOptions as BrokerOptions
from .broker._broker import BrokerServer as BrokerServer
from .broker._broker import BrokerStatistics as BrokerStatistics
from .broker._broker import serve_broker as serve_broker
from .broker._http import HttpServer as HttpServer
from .bus._bus import Bus as Bus
from .bus._bus import BusStatistics as BusStatistics
from .bus._bus import open_bus as open_bus
from .bus._channel import EventChannel as EventChannel
from .bus._channel import Handler as Handler
from .bus._channel import Offered as Offered
from .bus._channel import Overflow as Overflow
from .bus._channel import Sink as Sink
from .bus._channel import Subscription as Subscription
from .bus._channel import SubscriptionStatistics as SubscriptionStatistics
from .client._client import Client as Client
from .client._client import ClientState as ClientState
from .client._client import ClientStatistics as ClientStatistics
from .client._client import open_client as open_client

__version__ = "0.1.0.dev0"

__all__ = [
    "Broker",
    "BrokerOptions",
    "BrokerServer",
    "BrokerStatistics",
    "Bus",
    "BusStatistics",
    "Client",
    "ClientState",
    "ClientStatistics",
    "ConnectionClosed",
    "DuplicateEventId",
    "EpochChanged",
    "Event",
    "EventChannel",
    "Handler",
    "HandshakeError",
    "HttpServer",
    "InvalidTopic",
    "LimitExceeded",
    "LocalProtocolError",
    "NoResponders",
    "Offered",
    "Overflow",
    "PermissionDenied",
    "ProtocolError",
    "RealtimeError",
    "Refused",
    "RemoteProtocolError",
    "RequestFailed",
    "Sink",
    "SlowConsumer",
    "StoreError",
    "StoreUnavailable",
    "Subscription",
    "SubscriptionStatistics",
    "TooLarge",
    "event_type",
    "open_bus",
    "open_channel",
    "open_client",
    "serve_broker",
    "topic_matches",
    "validate_pattern",
    "validate_topic",
]
