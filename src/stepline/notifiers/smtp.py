"""Alerts as plain-text e-mail through an SMTP relay."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from stepline.notifiers.base import Alert, Notifier, NotifyError
from stepline.redact import redact_text

__all__ = ["SmtpNotifier"]


class SmtpNotifier(Notifier):
    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str,
        recipients: Sequence[str],
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        use_ssl: bool = False,
        timeout: float = 10.0,
    ) -> None:
        # A bare string is a Sequence[str] too, and would mail each of its characters.
        if isinstance(recipients, str):
            raise ValueError("smtp recipients must be a list of addresses, not a string")
        if not host:
            raise ValueError("smtp host must not be empty")
        if not sender:
            raise ValueError("smtp sender (from) must not be empty")
        if not recipients or not all(recipients):
            raise ValueError("smtp recipients (to) must name at least one address")
        if starttls and use_ssl:
            raise ValueError("choose either starttls (port 587) or use_ssl (port 465), not both")
        if password and not username:
            raise ValueError("smtp password is set but username is not")
        if timeout <= 0:
            raise ValueError(f"smtp timeout must be positive, got {timeout}")
        self._host = host
        self._port = port
        self._sender = sender
        self._recipients = tuple(recipients)
        self._username = username
        self._password = password
        self._starttls = starttls
        self._use_ssl = use_ssl
        self._timeout = timeout

    def __repr__(self) -> str:
        security = "ssl" if self._use_ssl else "starttls" if self._starttls else "plain"
        return (
            f"SmtpNotifier(host={self._host!r}, port={self._port}, sender={self._sender!r}, "
            f"recipients={list(self._recipients)!r}, username={self._username!r}, "
            f"security={security!r}, timeout={self._timeout})"
        )

    def send(self, alert: Alert) -> None:
        self.send_message(alert.headline(), alert.text())

    def send_message(self, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = ", ".join(self._recipients)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=True)
        # An explicit domain, because make_msgid() would otherwise do a DNS lookup.
        message["Message-ID"] = make_msgid(domain=self._sender.rpartition("@")[2] or "stepline")
        message.set_content(body)
        try:
            refused = self._deliver(message)
        except smtplib.SMTPAuthenticationError as exc:
            # Servers may echo the credentials they rejected, so only the code is kept.
            raise NotifyError(f"smtp authentication failed (code {exc.smtp_code})") from None
        except (smtplib.SMTPException, OSError) as exc:
            reason = self._safe(str(exc)) or "no detail"
            raise NotifyError(f"smtp delivery failed ({type(exc).__name__}: {reason})") from None
        if refused:
            raise NotifyError(f"smtp server refused recipients: {', '.join(sorted(refused))}")

    def _deliver(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        # Loading the CA bundle costs time, so only encrypted connections pay for it.
        context = ssl.create_default_context() if self._use_ssl or self._starttls else None
        smtp: smtplib.SMTP
        if self._use_ssl:
            smtp = smtplib.SMTP_SSL(self._host, self._port, timeout=self._timeout, context=context)
        else:
            smtp = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
        with smtp:
            if self._starttls:
                smtp.starttls(context=context)
            if self._username:
                smtp.login(self._username, self._password or "")
            return smtp.send_message(
                message, from_addr=self._sender, to_addrs=list(self._recipients)
            )

    def _safe(self, text: str) -> str:
        return redact_text(text, [self._password] if self._password else [])
