"""SMTP with aiosmtplib: a pool of reused connections, failures classified.

One connection carries many messages (EHLO and TLS once, then MAIL/RCPT/DATA per
email); a connection that errs on the transport is dropped, one that got a refusal is
kept (aiosmtplib sends RSET).  Connections are renewed after a number of messages
because providers cap messages per session.

Each email is one transaction of MAIL, RCPT and DATA issued with aiosmtplib's commands
(``execute_command``, ``data``) rather than ``sendmail``: the addresses were checked when
the message was built (printable ASCII, no brackets or spaces), so ``sendmail``'s four
address parses and its second line-ending pass are pure cost at hundreds of emails a
second.  Failure handling is ``sendmail``'s: a refusal raises the same exceptions and
the envelope is reset with RSET so the connection stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

import aiosmtplib

from notify.messages import OutgoingEmail
from notify.retries import FailureKind, classify_smtp_code
from notify.settings import SmtpEndpoint

logger = logging.getLogger(__name__)


class SendFailure(Exception):
    """The SMTP server did not take the message.  ``kind`` says whether to retry."""

    def __init__(self, kind: FailureKind, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.kind: FailureKind = kind
        self.reason = reason
        self.code = code


class MailTransport(Protocol):
    """Where emails go.  ``send`` returns once the server accepted the message."""

    async def send(self, email: OutgoingEmail) -> None:
        """Raises :class:`SendFailure` when the server refused it or could not be reached."""
        ...

    async def check(self) -> None:
        """Raises when the server cannot be reached (for /readyz)."""
        ...

    async def close(self) -> None: ...


class _Connection:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.sent = 0


@dataclass(eq=False)
class SmtpPool:
    """A :class:`MailTransport` over at most ``size`` reused SMTP connections."""

    endpoint: SmtpEndpoint
    _: KW_ONLY
    size: int
    timeout_s: float
    messages_per_connection: int
    local_hostname: str | None = None
    _idle: list[_Connection] = field(init=False, default_factory=list)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.size)

    async def _connect(self) -> _Connection:
        endpoint = self.endpoint
        client = aiosmtplib.SMTP(
            hostname=endpoint.hostname,
            port=endpoint.port,
            username=endpoint.username,
            password=endpoint.password,
            use_tls=endpoint.use_tls,
            start_tls=endpoint.start_tls,
            timeout=self.timeout_s,
            local_hostname=self.local_hostname,
        )
        await client.connect()
        if client.is_ehlo_or_helo_needed:
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
        return _Connection(client)

    async def send(self, email: OutgoingEmail) -> None:
        async with self._slots:
            connection: _Connection | None = None
            keep = False
            try:
                connection = self._idle.pop() if self._idle else await self._connect()
                await _transaction(connection.client, email)
                connection.sent += 1
                keep = connection.sent < self.messages_per_connection
            except aiosmtplib.SMTPRecipientsRefused as error:
                code = error.recipients[0].code if error.recipients else None
                keep = True
                raise SendFailure(classify_smtp_code(code), f"recipient refused ({code})", code) from error
            except aiosmtplib.SMTPResponseException as error:
                # 421 means the server is closing the session; anything else leaves it usable.
                keep = error.code != 421 and connection is not None and connection.client.is_connected
                kind = classify_smtp_code(error.code)
                raise SendFailure(kind, f"{type(error).__name__} ({error.code})", error.code) from error
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                raise SendFailure("temporary", f"connection: {type(error).__name__}") from error
            finally:
                if connection is not None:
                    if keep and not self._closed:
                        self._idle.append(connection)
                    else:
                        await _close_quietly(connection)

    async def check(self) -> None:
        connection = await self._connect()
        try:
            await connection.client.noop()
        finally:
            await _close_quietly(connection)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_close_quietly(connection) for connection in idle))


async def _transaction(client: aiosmtplib.SMTP, email: OutgoingEmail) -> None:
    """MAIL, RCPT, DATA for one recipient; RSET after a refusal.  Raises as ``sendmail`` does."""
    # The message's lines already end in CRLF (it is built that way), so its length is
    # what DATA transmits before dot-stuffing: RFC 1870's SIZE.
    options = [b"SIZE=%d" % len(email.data)] if client.supports_extension("size") else []
    try:
        response = await client.execute_command(
            b"MAIL", b"FROM:<" + email.envelope_from.encode() + b">", *options
        )
        if response.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, email.envelope_from)
        response = await client.execute_command(b"RCPT", b"TO:<" + email.envelope_to.encode() + b">")
        if response.code not in (aiosmtplib.SMTPStatus.completed, aiosmtplib.SMTPStatus.will_forward):
            raise aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(response.code, response.message, email.envelope_to)]
            )
        await client.data(email.data)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await client.rset()
        raise


async def _close_quietly(connection: _Connection) -> None:
    client = connection.client
    if client.is_connected:
        try:
            await asyncio.wait_for(client.quit(), timeout=2)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()
