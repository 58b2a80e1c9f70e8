"""Failure notifications: POST a JSON alert to a configurable webhook, or log it.

The webhook URL comes from the environment (``CREDIT_ALERT_WEBHOOK``), never from the repository;
without one the alert is only logged. A webhook that is down must not hide the original failure,
so delivery problems are logged, not raised.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)
WEBHOOK_ENV = "CREDIT_ALERT_WEBHOOK"


def send_alert(payload: dict[str, Any], url: str | None = None, timeout: float = 5.0) -> bool:
    """Deliver ``payload``; True when a webhook accepted it (2xx), False when only logged."""
    url = url or os.environ.get(WEBHOOK_ENV)
    text = json.dumps(payload, ensure_ascii=False, default=str)
    log.error("credit alert: %s", text)
    if not url:
        return False
    request = urllib.request.Request(
        url, data=text.encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - operator-set URL
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError) as exc:
        log.error("credit alert could not be delivered to the webhook: %s", exc)
        return False
