"""Signal receivers that keep the queues in step with Django's sessions."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.http import HttpRequest

from . import api, store


@receiver(user_logged_out, dispatch_uid="longpoll_logged_out")
def purge_on_logout(sender: Any, request: HttpRequest | None, **kwargs: Any) -> None:
    """A logged-out session's pending messages were meant for that user: drop them."""
    key = request.session.session_key if request is not None else None
    if key:
        api.end_session(key)


@receiver(user_logged_in, dispatch_uid="longpoll_logged_in")
def record_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Note the user of the (new) session key, so ``send_to_user`` reaches it."""
    session = getattr(request, "session", None)
    if session is not None and session.session_key:
        store.record_user(session.session_key, user.pk, session.get_expiry_date())


def purge_deleted_session(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A database session was deleted: end its polls and drop its queue."""
    api.end_session(instance.session_key)


def connect() -> None:
    """Connect what needs the apps ready (the Session model, when installed)."""
    from django.apps import apps

    if apps.is_installed("django.contrib.sessions"):
        from django.contrib.sessions.models import Session

        post_delete.connect(
            purge_deleted_session, sender=Session, dispatch_uid="longpoll_session_deleted"
        )
