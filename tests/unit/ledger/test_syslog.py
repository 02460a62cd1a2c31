"""RFC 5424 messages and octet-counted framing (RFC 5425 / RFC 6587): exact bytes, PRI values, the
BOM, header and structured-data escaping, destinations, and a plain-TCP send to a local socket."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from medvault.errors import InvalidInput
from medvault.ledger.syslog import (
    BOM,
    SdElement,
    SyslogDestination,
    SyslogError,
    SyslogSender,
    format_message,
    format_timestamp,
    frame,
    parse_destination,
    pri,
    split_frames,
)

T = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("facility", "severity", "value"),
    [(10, 5, 85), (10, 4, 84), (10, 0, 80), (0, 0, 0), (23, 7, 191), (4, 2, 34)],
)
def test_pri(facility: int, severity: int, value: int) -> None:
    assert pri(facility, severity) == value


@pytest.mark.parametrize(("facility", "severity"), [(24, 0), (-1, 0), (10, 8), (10, -1)])
def test_pri_out_of_range(facility: int, severity: int) -> None:
    with pytest.raises(InvalidInput):
        pri(facility, severity)


def test_exact_message_bytes() -> None:
    message = format_message(
        b"<AuditMessage/>",
        severity=5,
        timestamp=T,
        hostname="pacs.example.org",
        procid="4242",
        msgid="IHE+RFC-3881",
        structured_data=[SdElement("medvault@32473", [("index", "7"), ("origin", "a/b")])],
    )
    assert message == (
        b"<85>1 2024-05-06T07:08:09.123456Z pacs.example.org medvault 4242 IHE+RFC-3881 "
        b'[medvault@32473 index="7" origin="a/b"] \xef\xbb\xbf<AuditMessage/>'
    )


def test_nil_values_and_bom() -> None:
    message = format_message(
        "détails ✓".encode(), severity=4, timestamp=T, hostname=None, msgid=None, app_name=""
    )
    assert message == b"<84>1 2024-05-06T07:08:09.123456Z - - - - - " + BOM + "détails ✓".encode()
    header, _, rest = message.partition(BOM)
    assert header.endswith(b" - ") and rest.decode("utf-8") == "détails ✓"
    assert message.count(BOM) == 1


def test_msg_must_be_utf8() -> None:
    with pytest.raises(InvalidInput, match="UTF-8"):
        format_message(b"\xff\xfe", severity=5, timestamp=T, hostname="h", msgid="m")


def test_header_fields_are_printable_ascii_and_cut_to_length() -> None:
    message = format_message(
        b"x",
        severity=5,
        timestamp=T,
        hostname="my host\tnäme" + "h" * 300,
        app_name="a" * 60,
        procid="p" * 200,
        msgid="m" * 40,
    )
    fields = message.split(b" ")
    assert fields[2] == b"myhostnme" + b"h" * (255 - 9)
    assert fields[3] == b"a" * 48
    assert fields[4] == b"p" * 128
    assert fields[5] == b"m" * 32


def test_timestamp_is_utc_with_microseconds() -> None:
    assert format_timestamp(T.astimezone(timezone(timedelta(hours=-5)))) == "2024-05-06T07:08:09.123456Z"
    with pytest.raises(InvalidInput):
        format_timestamp(datetime(2024, 1, 1))


def test_structured_data_escaping_and_names() -> None:
    element = SdElement("x@32473", [("v", 'a"b\\c]d é')])
    assert element.render() == '[x@32473 v="a\\"b\\\\c\\]d é"]'
    for bad in ("", "a b", "a=b", 'a"b', "a]b", "x" * 33, "é"):
        with pytest.raises(InvalidInput):
            SdElement(bad)
        with pytest.raises(InvalidInput):
            SdElement("ok", [(bad, "v")])


def test_exact_framing() -> None:
    assert frame(b"hello") == b"5 hello"
    assert frame("é".encode()) == b"2 \xc3\xa9"  # octets, not characters
    message = format_message(b"<a/>", severity=5, timestamp=T, hostname="h", msgid="m")
    framed = frame(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(message) == len(rest) and rest == message


def test_split_frames() -> None:
    messages = [b"one", b"two two", "трі".encode(), b"4 with a space"]
    assert list(split_frames(b"".join(frame(m) for m in messages))) == messages
    assert list(split_frames(b"")) == []
    for bad in (b"x hello", b"05 hello", b"10 short", b"5hello", b" 5 hello"):
        with pytest.raises(InvalidInput):
            list(split_frames(bad))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("syslog+tls://siem.example.org", SyslogDestination("tls", "siem.example.org", 6514)),
        ("syslog+tls://127.0.0.1:16514", SyslogDestination("tls", "127.0.0.1", 16514)),
        ("SYSLOG+TLS://[::1]:6514/", SyslogDestination("tls", "::1", 6514)),
        ("syslog+tcp://10.0.0.5:601", SyslogDestination("tcp", "10.0.0.5", 601)),
    ],
)
def test_parse_destination(text: str, expected: SyslogDestination) -> None:
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "syslog+tcp://10.0.0.5",  # plain TCP: the port must be said
        "syslog://h:514",
        "https://h:6514",
        "syslog+tls://h:notaport",
        "syslog+tls://h:6514/path",
        "syslog+tls://user@h:6514",
        "syslog+tls://:6514",
    ],
)
def test_bad_destinations(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_destination(text)


def test_destination_text() -> None:
    assert str(SyslogDestination("tls", "::1", 6514)) == "syslog+tls://[::1]:6514"
    assert str(SyslogDestination("tcp", "h", 601)) == "syslog+tcp://h:601"


def test_plain_tcp_sends_exact_frames() -> None:
    received = bytearray()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def receive() -> None:
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(65536):
                    received.extend(chunk)

        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        messages = [
            format_message(f"m{i}".encode(), severity=5, timestamp=T, hostname="h", msgid="m")
            for i in range(3)
        ]
        with SyslogSender(parse_destination(f"syslog+tcp://127.0.0.1:{port}")) as sender:
            for m in messages:
                sender.send(m)
            assert sender.sent == 3
        thread.join(10)
    assert bytes(received) == b"".join(frame(m) for m in messages)


def test_plain_tcp_refuses_tls_settings(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="plain TCP"):
        SyslogSender(parse_destination("syslog+tcp://127.0.0.1:9"), ca_file=tmp_path / "ca.crt")


def test_nobody_listening_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(SyslogError, match=f"cannot connect to the syslog collector at 127.0.0.1:{port}"):
            SyslogSender(parse_destination(f"syslog+tcp://127.0.0.1:{port}"), timeout=5)
