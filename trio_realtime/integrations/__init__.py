"""What connects a broker to the rest of a system.

* :class:`Webhook`: an endpoint that gets events by HTTP ``POST`` (made by
  :meth:`Broker.webhook <trio_realtime.Broker.webhook>` or the config file's
  ``[[webhooks]]``), its :class:`WebhookStatistics`, and :func:`new_webhook_secret`.
"""

from __future__ import annotations

from ._webhooks import Webhook as Webhook
from ._webhooks import WebhookStatistics as WebhookStatistics
from ._webhooks import new_webhook_secret as new_webhook_secret

__all__ = [
    "Webhook",
    "WebhookStatistics",
    "new_webhook_secret",
]
