"""What the app stores: one row per polling session, its queued messages, and
the ids of client messages already handled."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models


def session_fingerprint(session_key: str) -> str:
    """A short, non-reversible name for a session key.

    The full key is a bearer credential, so it never appears in admin pages,
    logs or channel-layer group names; this fingerprint stands in for it.
    """
    return hashlib.sha256(session_key.encode()).hexdigest()[:16]


class LongpollSession(models.Model):
    """A Django session that polls or is sent messages.

    ``last_id`` is the id of the newest message ever queued for the session:
    message ids count up per session, so a cursor below ``last_id`` means
    messages are pending, and the first pending id above ``cursor + 1`` means
    some were dropped.
    """

    session_key = models.CharField(max_length=40, unique=True)
    fingerprint = models.CharField(max_length=16, db_index=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="longpoll_sessions",
    )
    last_id = models.BigIntegerField(default=0)
    acked_id = models.BigIntegerField(
        default=0, help_text="Id of the newest message the browser acknowledged."
    )
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=255, blank=True)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_poll = models.DateTimeField(null=True, blank=True)
    delivered = models.BigIntegerField(
        default=0, help_text="Messages acknowledged by the browser (counted when deleted)."
    )
    dropped = models.BigIntegerField(
        default=0, help_text="Messages removed unread because the queue was full."
    )

    class Meta:
        verbose_name = "long-poll session"

    def __str__(self) -> str:
        return f"session {self.fingerprint}"

    def save(self, *args: object, **kwargs: object) -> None:
        self.fingerprint = session_fingerprint(self.session_key)
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class Message(models.Model):
    """A server-to-browser message waiting for its session to acknowledge it."""

    session = models.ForeignKey(LongpollSession, on_delete=models.CASCADE, related_name="messages")
    seq = models.BigIntegerField(help_text="Id of the message within its session.")
    type = models.CharField(max_length=100)
    data = models.JSONField(null=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="longpoll_message_session_seq")
        ]
        ordering = ["session", "seq"]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq}"


class ClientMessage(models.Model):
    """The id of a browser-to-server message already handled, so that a retry
    of the same id is not handled twice."""

    session = models.ForeignKey(
        LongpollSession, on_delete=models.CASCADE, related_name="client_messages"
    )
    client_id = models.CharField(max_length=64)
    received_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["session", "client_id"], name="longpoll_clientmessage_once"
            )
        ]


class StatsCounter(models.Model):
    """A running total for the stats (``longpoll_app.stats``).

    Written only when rows are removed (retention, a session ending, an admin
    purge), never per send or per poll: per-session totals live on
    ``LongpollSession`` and are folded in here when its row goes.
    """

    name = models.CharField(max_length=32, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} = {self.value}"


class HubReport(models.Model):
    """What one server process's hub (one event loop) last said about itself.

    Each hub rewrites its row every ``LONGPOLL_STATUS_INTERVAL`` seconds; a row
    not rewritten for three intervals belongs to a process that stopped.
    """

    name = models.CharField(max_length=200, unique=True)
    process = models.CharField(max_length=200, help_text="host:pid")
    started_at = models.DateTimeField()
    updated_at = models.DateTimeField(db_index=True)
    held_polls = models.IntegerField(default=0)
    sessions = models.IntegerField(default=0, help_text="Sessions the hub follows.")
    latency = models.JSONField(
        default=dict, help_text="Send-to-answer latency histogram of the process."
    )

    def __str__(self) -> str:
        return self.name


class HeldSession(models.Model):
    """A session that held a poll in a hub at its last report."""

    hub = models.ForeignKey(HubReport, on_delete=models.CASCADE, related_name="held")
    # No foreign key: a session may end between two reports; the next report
    # drops the row, and a lookup by pk simply finds no session.
    session_pk = models.BigIntegerField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hub", "session_pk"], name="longpoll_held_once")
        ]
