"""Alert notifications end to end (medvault.alerting.notify): the online worker over a real home
delivers each alert to a signed-webhook receiver and to an RFC 5425 syslog collector that this
test runs over TLS on free ports (certificates from medvault's own CA code), retries a receiver
that fails until it recovers, and never delivers an alert twice."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from medvault.alerting.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, alert_json
from medvault.alerting.officer import handle_alert
from medvault.crypto.tls import server_ssl_context
from medvault.home import OpenHome
from medvault.ledger.events import Actor, ActorKind
from medvault.ledger.syslog import BOM, split_frames
from tests.integration.test_ledger_export import Pki, write_pki
from tests.unit.alerting.conftest import Clock, alerts_of, burst, opened_home, worker_for

pytestmark = pytest.mark.integration

SECRET = "webhook secret for tests, 32 bytes+"
SECRET_ENV = "MEDVAULT_TEST_WEBHOOK_SECRET"
OFFICER = Actor(kind=ActorKind.USER, id="privacy-officer", address="10.0.0.2", auth="password+totp")
NOTE = "NOTE-MARKER-0931: spoke to the user's manager"


opened = pytest.fixture(opened_home, name="opened")
clock = pytest.fixture(lambda: Clock(), name="clock")


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Webhook:
    """An HTTPS receiver: records every request, answers with ``status`` (the test changes it)."""

    server: ThreadingHTTPServer
    status: int = 200
    received: list[Delivery] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}/hooks/medvault"

    def delivered(self) -> list[dict[str, Any]]:
        """The alerts it accepted (2xx), each checked: signature over timestamp + "." + body."""
        out = []
        for d in self.received:
            stamp = d.headers[TIMESTAMP_HEADER]
            assert abs(int(stamp) - time.time()) < 120  # fresh: a receiver refuses replays
            expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + d.body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(d.headers[SIGNATURE_HEADER], "sha256=" + expected)
            assert d.headers["Content-Type"] == "application/json"
            if 200 <= d.status < 300:
                out.append(json.loads(d.body))
        return out


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return write_pki(tmp_path / "pki", "receivers")


@pytest.fixture
def webhook(pki: Pki) -> Iterator[Webhook]:
    hook: Webhook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = hook.status
            hook.received.append(Delivery(dict(self.headers.items()), body, status))
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "https://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = server_ssl_context(pki.server_cert, pki.server_key, key_password=None)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    hook = Webhook(server)
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()
    thread.join(10)


class Collector:
    """An RFC 5425 syslog collector over TLS: one session per connection, every octet kept."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.sessions: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="syslog-collector", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(30)
            data = bytearray()
            try:
                with self._context.wrap_socket(conn, server_side=True) as tls:
                    while chunk := tls.recv(65536):
                        data.extend(chunk)
                    tls.unwrap()
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()
                self.sessions.append(bytes(data))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()


@pytest.fixture
def collector(pki: Pki) -> Iterator[Collector]:
    receiver = Collector(server_ssl_context(pki.server_cert, pki.server_key, key_password=None))
    yield receiver
    receiver.close()


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def _hooked(opened: OpenHome, clock: Clock, webhook: Webhook, pki: Pki, **more: str) -> Any:
    return worker_for(
        opened,
        clock,
        responses=(),
        webhook_url=webhook.url,
        webhook_secret_env=SECRET_ENV,
        webhook_ca=str(pki.ca),
        **more,
    )


def test_every_alert_reaches_the_webhook_signed_once(
    opened: OpenHome, clock: Clock, webhook: Webhook, pki: Pki
) -> None:
    worker = _hooked(opened, clock, webhook, pki)
    burst(opened, "dr-hooked")
    worker.step()
    stored = alerts_of(opened)
    assert stored and all(a.notified for a in stored)
    delivered = webhook.delivered()
    assert sorted(d["id"] for d in delivered) == [a.id for a in stored]
    by_id = {d["id"]: d for d in delivered}
    for alert in stored:
        assert by_id[alert.id] == json.loads(json.dumps(alert_json(alert)))
        assert by_id[alert.id]["subject"] == "dr-hooked" and by_id[alert.id]["reasons"]
    clock.advance(3600)
    worker.step()
    assert len(webhook.received) == len(stored)  # delivered ones are not sent again


def test_a_failing_webhook_is_retried_later_and_gets_each_alert_once_it_recovers(
    opened: OpenHome, clock: Clock, webhook: Webhook, pki: Pki
) -> None:
    webhook.status = 500
    worker = _hooked(opened, clock, webhook, pki)
    burst(opened, "dr-retried")
    worker.step()
    stored = alerts_of(opened)
    assert len(stored) > 1
    # one attempt: the channel failed, so the other alerts wait out its back-off with it
    assert len(webhook.received) == 1 and webhook.delivered() == []
    assert not any(a.notified for a in opened.alerts.find())
    worker.step()
    assert len(webhook.received) == 1  # backing off: not at once again
    # meanwhile an officer resolves one with a note: the note never leaves the archive
    handle_alert(
        alerts=opened.alerts,
        index=opened.archive.index,
        ledger=opened.ledger,
        alert_id=stored[0].id,
        status="resolved",
        actor=OFFICER,
        now=clock.now(),
        disposition="benign_explained",
        note=NOTE,
    )
    clock.advance(6)  # past the first back-off (5 s)
    webhook.status = 302  # a redirect is not a delivery (and is not followed)
    worker.step()
    assert len(webhook.received) == 2 and webhook.delivered() == []
    webhook.status = 200
    worker.step()
    assert len(webhook.received) == 2  # the second back-off (10 s) runs
    clock.advance(11)
    worker.step()
    delivered = webhook.delivered()
    assert sorted(d["id"] for d in delivered) == [a.id for a in stored]  # each once
    assert all(a.notified for a in opened.alerts.find())
    resolved = next(d for d in delivered if d["id"] == stored[0].id)
    assert resolved["status"] == "resolved" and "note" not in resolved
    assert all(NOTE.encode() not in d.body for d in webhook.received)
    for _ in range(3):
        clock.advance(700)
        worker.step()
    assert len(webhook.delivered()) == len(stored)  # never twice


def test_a_missing_secret_at_delivery_time_sends_nothing_unsigned(
    opened: OpenHome, clock: Clock, webhook: Webhook, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = _hooked(opened, clock, webhook, pki)
    monkeypatch.delenv(SECRET_ENV)  # removed after the start
    burst(opened, "dr-unsigned")
    worker.step()
    assert webhook.received == [] and not any(a.notified for a in opened.alerts.find())
    monkeypatch.setenv(SECRET_ENV, SECRET)
    clock.advance(6)
    worker.step()
    assert len(webhook.delivered()) == len(alerts_of(opened))


def test_an_untrusted_webhook_certificate_is_not_delivered_to(
    opened: OpenHome, clock: Clock, webhook: Webhook, tmp_path: Path
) -> None:
    other = write_pki(tmp_path / "other", "someone else")
    worker = _hooked(opened, clock, webhook, other)
    burst(opened, "dr-mitm")
    worker.step()
    assert webhook.received == []  # the handshake failed: nothing was sent
    assert not any(a.notified for a in opened.alerts.find())


def _frames(collector: Collector) -> list[bytes]:
    return [message for session in collector.sessions for message in split_frames(session)]


def test_every_alert_reaches_the_syslog_collector_as_one_atna_frame(
    opened: OpenHome, clock: Clock, collector: Collector, pki: Pki
) -> None:
    worker = worker_for(
        opened, clock, responses=(), syslog=f"syslog+tls://127.0.0.1:{collector.port}", syslog_ca=str(pki.ca)
    )
    burst(opened, "dr-syslogged")
    worker.step()
    stored = alerts_of(opened)
    assert stored and all(a.notified for a in stored)
    deadline = time.monotonic() + 10
    while len(collector.sessions) < len(stored) and time.monotonic() < deadline:
        time.sleep(0.02)
    frames = _frames(collector)
    assert len(frames) == len(stored)
    seen = set()
    for message in frames:
        header, _, xml = message.partition(BOM)
        assert header.startswith(b"<84>1 ")  # authpriv.warning (10 * 8 + 4), RFC 5424 version 1
        assert b" medvault " in header and b" ALERT [medvault-alert@32473 " in header
        fields = dict(
            part.split(b"=", 1)
            for part in header.split(b"[medvault-alert@32473 ")[1].rstrip(b"] ").split(b" ")
        )
        alert = next(a for a in stored if fields[b"id"] == f'"{a.id}"'.encode())
        assert fields[b"severity"] == f'"{alert.severity}"'.encode()
        assert fields[b"subject"] == b'"dr-syslogged"'
        seen.add(alert.id)
        root = ET.fromstring(xml)
        assert root.tag == "AuditMessage"
        codes = [e.get("csd-code") for e in root.iter("EventTypeCode")]
        assert "alert" in codes
        objects = [e.get("ParticipantObjectID") for e in root.iter("ParticipantObjectIdentification")]
        assert alert.incident_id in objects
    assert seen == {a.id for a in stored}
    clock.advance(3600)
    worker.step()
    assert len(_frames(collector)) == len(stored)


def test_a_channel_that_took_an_alert_does_not_get_it_again_while_another_is_retried(
    opened: OpenHome, clock: Clock, collector: Collector, webhook: Webhook, pki: Pki
) -> None:
    webhook.status = 503
    worker = _hooked(
        opened, clock, webhook, pki, syslog=f"syslog+tls://127.0.0.1:{collector.port}", syslog_ca=str(pki.ca)
    )
    burst(opened, "dr-two-channels")
    worker.step()
    stored = alerts_of(opened)
    for _ in range(3):
        clock.advance(30)
        worker.step()
    webhook.status = 200
    clock.advance(60)
    worker.step()
    assert all(a.notified for a in opened.alerts.find())
    assert len(webhook.delivered()) == len(stored)
    deadline = time.monotonic() + 10
    while len(collector.sessions) < len(stored) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert len(_frames(collector)) == len(stored)  # syslog took each alert once, at the first try


def test_an_unreachable_collector_is_retried(opened: OpenHome, clock: Clock, pki: Pki) -> None:
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = worker_for(
        opened, clock, responses=(), syslog=f"syslog+tls://127.0.0.1:{port}", syslog_ca=str(pki.ca)
    )
    burst(opened, "dr-unreachable")
    worker.step()  # refused at once: nothing hangs, nothing is lost
    assert alerts_of(opened) and not any(a.notified for a in opened.alerts.find())


def test_a_webhook_that_hangs_costs_one_timeout_per_back_off_not_one_per_alert(
    opened: OpenHome, clock: Clock, pki: Pki
) -> None:
    """A receiver that accepts connections and never answers (a SIEM behind a dropping firewall):
    the scoring of the next events must not wait a timeout for every pending alert."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        worker = worker_for(
            opened,
            clock,
            responses=(),
            webhook_url=f"https://127.0.0.1:{listener.getsockname()[1]}/hook",
            webhook_secret_env=SECRET_ENV,
            webhook_ca=str(pki.ca),
        )
        worker.notifier.timeout = 1.0
        burst(opened, "dr-hanging")
        started = time.monotonic()
        worker.step()
        first = time.monotonic() - started
        pending = len(alerts_of(opened))
        assert pending > 2 and 1.0 <= first < 1.0 * 2, f"{pending} alerts, the step took {first:.1f} s"
        burst(opened, "dr-next", address="10.77.0.1")
        started = time.monotonic()
        assert worker.step().alerts > 0  # the next events are scored at once, alerts raised
        assert time.monotonic() - started < 0.9
        assert not any(a.notified for a in opened.alerts.find())
    finally:
        listener.close()
