"""The security model: authenticators and permissions.

Broker sessions consult it for every connection, publish and subscription; the bus never does
(in-process code is trusted). :class:`Permissions` says what a user may publish and subscribe
to, with :func:`covers` and :func:`overlaps` as the two questions it asks of topic patterns.
"""

from __future__ import annotations

from ._auth import Authenticator as Authenticator
from ._auth import AuthFailed as AuthFailed
from ._auth import FirstOf as FirstOf
from ._auth import HandshakeInfo as HandshakeInfo
from ._auth import Identity as Identity
from ._auth import JWTAuthenticator as JWTAuthenticator
from ._auth import JWTKey as JWTKey
from ._auth import StaticUsers as StaticUsers
from ._auth import User as User
from ._auth import new_token as new_token
from ._auth import token_sha256 as token_sha256
from ._config import ConfigError as ConfigError
from ._config import ServerConfig as ServerConfig
from ._config import load_config as load_config
from ._permissions import INBOX_FILTER as INBOX_FILTER
from ._permissions import RESERVED_FILTER as RESERVED_FILTER
from ._permissions import Permissions as Permissions
from ._permissions import ResponsePermission as ResponsePermission
from ._permissions import SubscribeDecision as SubscribeDecision
from ._permissions import TopicRules as TopicRules
from ._permissions import covers as covers
from ._permissions import overlaps as overlaps

__all__ = [
    "INBOX_FILTER",
    "RESERVED_FILTER",
    "AuthFailed",
    "Authenticator",
    "ConfigError",
    "FirstOf",
    "HandshakeInfo",
    "Identity",
    "JWTAuthenticator",
    "JWTKey",
    "Permissions",
    "ResponsePermission",
    "ServerConfig",
    "StaticUsers",
    "SubscribeDecision",
    "TopicRules",
    "User",
    "covers",
    "load_config",
    "new_token",
    "overlaps",
    "token_sha256",
]
