"""What connects a broker to the rest of a system.

* :func:`asyncapi_document`: an AsyncAPI 3.0 document of the typed events (the
  ``trio-realtime asyncapi`` command and the HTTP side port's ``/asyncapi.json``), with
  :func:`payload_schema`, the JSON Schema of one typed payload.
* :class:`Webhook`: an endpoint that gets events by HTTP ``POST`` (made by
  :meth:`Broker.webhook <trio_realtime.Broker.webhook>` or the config file's
  ``[[webhooks]]``), its :class:`WebhookStatistics`, and :func:`new_webhook_secret`.
"""

from __future__ import annotations

from ._asyncapi import ASYNCAPI_VERSION as ASYNCAPI_VERSION
from ._asyncapi import asyncapi_document as asyncapi_document
from ._schema import payload_schema as payload_schema
from ._webhooks import Webhook as Webhook
from ._webhooks import WebhookStatistics as WebhookStatistics
from ._webhooks import new_webhook_secret as new_webhook_secret

__all__ = [
    "ASYNCAPI_VERSION",
    "Webhook",
    "WebhookStatistics",
    "asyncapi_document",
    "new_webhook_secret",
    "payload_schema",
]
