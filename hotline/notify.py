"""Delivery of notification records: a Protocol seam, with a webhook POST as the default notifier.

Family messages carry only that a call exists and its state (never operators' notes); supervisors get
the escalation with the call summary. A failure raises; the caller records it and retries with back-off.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Message:
    notification_id: int
    call_id: int
    recipient: str  # 'contact:<id>' or 'user:<id>'
    kind: str  # 'family' | 'escalation'
    webhook_url: str | None  # the contact's own webhook, when it has one
    payload: dict[str, Any]


class Notifier(Protocol):
    def send(self, message: Message) -> None:
        """Deliver or raise."""


class DeliveryError(Exception):
    """Not delivered; the message says why without echoing the (possibly secret-bearing) URL."""


class NoRoute(DeliveryError):
    """Nowhere to send it (no webhook for the contact, none by default): a setting, not an outage. Still
    retried, since a webhook may be configured meanwhile, but not worth a warning per attempt."""


class WebhookNotifier:
    """POST the payload as JSON to the contact's webhook_url, else to settings.notify_webhook_url."""

    def __init__(self, default_url: str | None, timeout_s: float = 5.0) -> None:
        self.default_url = default_url
        self.timeout_s = timeout_s

    def send(self, message: Message) -> None:
        url = message.webhook_url or self.default_url
        if not url:
            raise NoRoute("no webhook configured (contacts.webhook_url / notify_webhook_url)")
        if not url.startswith(("http://", "https://")):
            raise DeliveryError("webhook URL must be http(s)")
        body = json.dumps(message.payload).encode()
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": f"notification-{message.notification_id}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                if response.status >= 300:
                    raise DeliveryError(f"webhook answered HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"webhook answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryError(f"webhook unreachable: {type(exc).__name__}") from exc
