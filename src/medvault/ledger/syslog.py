"""Syslog for the SIEM export: RFC 5424 messages, sent over TLS (RFC 5425) or, only when asked
for explicitly, plain TCP (RFC 6587), both with octet-counting framing.

Message (:func:`format_message`)::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA BOM MSG

* PRI = facility * 8 + severity; medvault uses facility 10 (authpriv, security/authorization) with
  severity 5 (notice) for successful events and 4 (warning) for denied or failed ones, as IHE ATNA
  recommends: ``<85>``, ``<84>``.
* TIMESTAMP is RFC 3339 in UTC with microseconds (``2024-05-06T07:08:09.123456Z``).
* HOSTNAME, APP-NAME, PROCID and MSGID are printable US-ASCII (``-`` when empty), cut to the
  RFC's 255, 48, 128 and 32 octets.
* STRUCTURED-DATA is ``-`` or SD elements ``[id name="value" …]`` with ``"``, ``\\`` and ``]``
  escaped in values.
* MSG is UTF-8 text starting with a BOM (RFC 5424 §6.4).

Framing (:func:`frame`): ``MSG-LEN SP SYSLOG-MSG``, MSG-LEN being the decimal octet count of the
message (RFC 5425 §4.3, RFC 6587 §3.4.1); nothing else is sent between frames.

Transport (:class:`SyslogSender`): TLS 1.2 or later with the policy of
:mod:`medvault.crypto.tls`; the collector's certificate must chain to the given CA file (or, with
none, to the system's trust store) and name the host connected to; an optional client certificate
makes it mutual TLS. Plain TCP is used only for a ``syslog+tcp://`` destination.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

from medvault.crypto.tls import TLS12_CIPHERS, client_ssl_context
from medvault.errors import InvalidInput, LedgerError

__all__ = [
    "BOM",
    "DEFAULT_TLS_PORT",
    "FACILITY_AUTHPRIV",
    "SEVERITY_NOTICE",
    "SEVERITY_WARNING",
    "SdElement",
    "SyslogDestination",
    "SyslogError",
    "SyslogSender",
    "format_message",
    "format_timestamp",
    "frame",
    "is_syslog_destination",
    "parse_destination",
    "pri",
    "split_frames",
]

FACILITY_AUTHPRIV = 10  # security/authorization messages (RFC 5424 table 1)
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
SYSLOG_VERSION = 1
BOM = b"\xef\xbb\xbf"
NILVALUE = "-"
DEFAULT_TLS_PORT = 6514  # RFC 5425 §4.1 (syslog-tls)
SCHEMES = {"syslog+tls": "tls", "syslog+tcp": "tcp"}

_SD_NAME = re.compile(r"[!#-<>-\\^-~]{1,32}\Z")  # PRINTUSASCII except '=', SP, ']', '"'


class SyslogError(LedgerError):
    """The collector could not be reached, its certificate did not verify, or sending failed."""


def pri(facility: int, severity: int) -> int:
    """The PRI value: facility * 8 + severity (RFC 5424 §6.2.1)."""
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise InvalidInput(f"syslog facility {facility} / severity {severity} out of range")
    return facility * 8 + severity


def format_timestamp(t: datetime) -> str:
    """RFC 5424 §6.2.3 TIMESTAMP (RFC 3339) in UTC with microseconds."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidInput("a syslog timestamp must be timezone-aware")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _header(value: str | None, limit: int) -> str:
    """A header field: printable US-ASCII only (others dropped), at most ``limit`` octets."""
    if value is None:
        return NILVALUE
    text = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return text or NILVALUE


@dataclass(frozen=True)
class SdElement:
    """One STRUCTURED-DATA element: ``[id name="value" …]``."""

    id: str
    params: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        for name in (self.id, *(n for n, _ in self.params)):
            if not _SD_NAME.match(name):
                raise InvalidInput(f'{name!r} is not a syslog SD-NAME (1-32 printable ASCII, no = ] " space)')

    def render(self) -> str:
        out = [self.id]
        for name, value in self.params:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
            out.append(f'{name}="{escaped}"')
        return "[" + " ".join(out) + "]"


def format_message(
    msg: bytes,
    *,
    severity: int,
    timestamp: datetime,
    hostname: str | None,
    msgid: str | None,
    procid: str | None = None,
    app_name: str = "medvault",
    facility: int = FACILITY_AUTHPRIV,
    structured_data: Sequence[SdElement] = (),
) -> bytes:
    """One RFC 5424 message: header, structured data, then BOM and ``msg`` (UTF-8 text)."""
    try:
        msg.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("a syslog MSG must be UTF-8 text") from None
    header = " ".join(
        [
            f"<{pri(facility, severity)}>{SYSLOG_VERSION}",
            format_timestamp(timestamp),
            _header(hostname, 255),
            _header(app_name, 48),
            _header(procid, 128),
            _header(msgid, 32),
            "".join(e.render() for e in structured_data) or NILVALUE,
        ]
    )
    return header.encode("utf-8") + b" " + BOM + msg


def frame(message: bytes) -> bytes:
    """Octet-counting framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def split_frames(data: bytes) -> Iterator[bytes]:
    """The messages of a stream of octet-counted frames; raises InvalidInput if one is malformed
    or cut short."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 11)
        length_text = data[pos:space] if space > pos else b""
        if not length_text.isdigit() or length_text.startswith(b"0"):
            raise InvalidInput(f"no MSG-LEN at octet {pos} of the syslog stream")
        end = space + 1 + int(length_text)
        if end > len(data):
            raise InvalidInput(f"the syslog frame at octet {pos} is cut short")
        yield data[space + 1 : end]
        pos = end


@dataclass(frozen=True)
class SyslogDestination:
    transport: Literal["tls", "tcp"]
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"syslog+{self.transport}://{host}:{self.port}"


def is_syslog_destination(destination: str) -> bool:
    return "://" in destination


def parse_destination(destination: str) -> SyslogDestination:
    """``syslog+tls://host[:port]`` (port 6514 by default) or ``syslog+tcp://host:port`` (plain TCP:
    the port must be given)."""
    parts = urlsplit(destination)
    transport = SCHEMES.get(parts.scheme.lower())
    if transport is None:
        raise InvalidInput(
            f"unsupported destination scheme {parts.scheme!r}",
            hint="Use syslog+tls://HOST:PORT (RFC 5425), syslog+tcp://HOST:PORT (plain TCP) or a file path.",
        )
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput(f"bad port in {destination!r}") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise InvalidInput(f"{destination!r} must look like {parts.scheme}://HOST:PORT")
    if port is None:
        if transport == "tcp":
            raise InvalidInput("a syslog+tcp:// destination needs an explicit port")
        port = DEFAULT_TLS_PORT
    return SyslogDestination("tls" if transport == "tls" else "tcp", parts.hostname, port)


def _tls_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None, key_password: bytes | None
) -> ssl.SSLContext:
    if ca_file is not None:
        return client_ssl_context(
            ca_file,
            cert_file=cert_file,
            key_file=key_file if key_file is not None or cert_file is None else cert_file,
            key_password=key_password,
        )
    # No CA file: the system trust store, with the same TLS policy (1.2+, ECDHE AEAD suites).
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if cert_file is not None:
        try:
            ctx.load_cert_chain(cert_file, key_file or cert_file, password=key_password)
        except (ssl.SSLError, OSError) as exc:
            raise SyslogError(
                f"cannot load the client certificate {cert_file}: {type(exc).__name__}"
            ) from None
    return ctx


class SyslogSender:
    """One connection to a syslog collector; :meth:`send` writes one octet-counted frame.

    Use as a context manager (:meth:`finish` on success, :meth:`close` after an error). Errors are
    :class:`SyslogError` with a message that says what to check.
    """

    def __init__(
        self,
        destination: SyslogDestination,
        *,
        ca_file: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        client_key_password: bytes | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.destination = destination
        self.sent = 0
        if destination.transport == "tcp" and (ca_file is not None or client_cert is not None):
            raise InvalidInput(
                f"{destination} is plain TCP: a CA file or client certificate makes no sense there",
                hint="Use syslog+tls:// to send over TLS.",
            )
        context = (
            _tls_context(ca_file, client_cert, client_key, client_key_password)
            if destination.transport == "tls"
            else None
        )
        where = f"{destination.host}:{destination.port}"
        try:
            raw = socket.create_connection((destination.host, destination.port), timeout=timeout)
        except OSError as exc:
            raise SyslogError(
                f"cannot connect to the syslog collector at {where}: {exc.strerror or exc}",
                hint="Check the host, the port and that the collector is listening.",
            ) from None
        if context is None:
            self._sock: socket.socket = raw
            return
        try:
            self._sock = context.wrap_socket(raw, server_hostname=destination.host)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            trust = f"the CA file {ca_file}" if ca_file is not None else "the system's trusted CAs"
            raise SyslogError(
                f"the syslog collector at {where} presented a certificate that does not verify "
                f"against {trust}: {exc.verify_message}",
                hint="Pass the CA certificate that issued the collector's certificate (--ca-file), and "
                "connect by a name or address the certificate holds.",
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise SyslogError(
                f"the TLS handshake with the syslog collector at {where} failed: "
                f"{getattr(exc, 'reason', None) or exc}",
                hint="The collector must speak TLS 1.2 or later; if it requires a client certificate, "
                "pass one (--client-cert).",
            ) from None

    @property
    def _where(self) -> str:
        return f"{self.destination.host}:{self.destination.port}"

    def _failed(self, what: str, exc: BaseException) -> SyslogError:
        return SyslogError(
            f"{what} the syslog collector at {self._where} after {self.sent} messages: "
            f"{getattr(exc, 'reason', None) or exc}",
            hint="The collector ended the session (a TLS alert such as 'certificate required' means it "
            "wants a client certificate it trusts); messages sent since may not have been accepted.",
        )

    def _check_peer(self) -> None:
        """A collector sends no application data (RFC 5425 §4.3): anything to read is an alert or
        the end of the connection. TLS 1.3 reports a refused client certificate only this way."""
        sock = self._sock
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            data = sock.recv(4096)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return  # only TLS handshake messages (session tickets), or half a record
        except (ssl.SSLError, OSError) as exc:
            raise self._failed("the connection was ended by", exc) from None
        finally:
            sock.settimeout(timeout)
        if not data:
            raise self._failed("the connection was closed by", ConnectionError("end of stream"))

    def send(self, message: bytes) -> None:
        """Send one message (octet-counted); raises :class:`SyslogError` if the collector has
        ended the connection or the send fails."""
        self._check_peer()
        try:
            self._sock.sendall(frame(message))
        except (ssl.SSLError, OSError) as exc:
            raise self._failed("sending failed to", exc) from None
        self.sent += 1

    def finish(self) -> None:
        """Close after a complete export: TLS close_notify (RFC 5425 §4.4), and an error if the
        collector had refused the session (e.g. a TLS 1.3 client-certificate alert)."""
        sock = self._sock
        try:
            self._check_peer()
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(min(sock.gettimeout() or 5.0, 5.0))
                sock.unwrap()
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, TimeoutError):
            pass  # the collector closed without a close_notify of its own, or did not answer
        except (ssl.SSLError, OSError) as exc:
            raise self._failed("the connection was ended by", exc) from None
        finally:
            sock.close()

    def close(self) -> None:
        """Close without waiting (after an error): best-effort close_notify."""
        sock = self._sock
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(1.0)
                sock.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        finally:
            sock.close()

    def __enter__(self) -> SyslogSender:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.finish()
        else:
            self.close()
