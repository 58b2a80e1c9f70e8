"""Failure alerts reach a real HTTP webhook on loopback, and a dead webhook never raises."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from foundation.notify import send_alert


class Recorder(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook():
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.received = []
    yield f"http://127.0.0.1:{server.server_port}/alerts"
    server.shutdown()


def test_alert_is_posted_as_json(webhook: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDIT_ALERT_WEBHOOK", webhook)
    assert send_alert({"task_id": "contract.extract", "error": "source 'contract' is unavailable"}) is True
    assert Recorder.received == [{"task_id": "contract.extract", "error": "source 'contract' is unavailable"}]


def test_without_webhook_the_alert_is_logged(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.delenv("CREDIT_ALERT_WEBHOOK", raising=False)
    assert send_alert({"task_id": "publish"}) is False
    assert "publish" in caplog.text


def test_unreachable_webhook_does_not_raise(caplog) -> None:
    assert send_alert({"task_id": "x"}, url="http://127.0.0.1:9/nothing", timeout=1) is False
    assert "could not be delivered" in caplog.text
