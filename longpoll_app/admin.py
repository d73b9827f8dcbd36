"""The Django admin for the long-poll sessions and their queued messages.

A session key is a bearer credential: no page here shows one. Sessions are
named by ``fingerprint`` (a sha256 prefix) and found by it or by username.
The records are the app's own bookkeeping, so they cannot be added or edited
here; the admin acts on them through actions that keep the hubs in step.

How fresh each column is (see also the README):

* user, IP address, user agent: written when a server process re-checks the
  session (its first poll there, then every ``LONGPOLL_SESSION_RECHECK``
  seconds while it polls) and they changed, and at login; last poll: at such a
  re-check when older than ``store.LAST_POLL_PRECISION``;
* poll held: from each process's last report (every
  ``LONGPOLL_STATUS_INTERVAL`` seconds);
* pending, delivered: read from the database when the page is shown
  (``delivered`` is written ``hub.ACK_DELAY`` after the acknowledging poll).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from . import api, retention, stats, store
from .conf import conf
from .models import HeldSession, LongpollSession, Message
from .protocol import validate_type

SESSION_FIELDS: tuple[str, ...] = (
    "fingerprint",
    "user",
    "ip_address",
    "user_agent",
    "first_seen",
    "last_poll",
    "expires_at",
    "poll_held",
    "pending",
    "delivered",
    "dropped",
    "last_id",
    "acked_id",
    "pending_messages",
)
MESSAGE_FIELDS = ("session_link", "seq", "type", "data_json", "created_at", "state")
PENDING_SHOWN = 50  # pending messages listed on a session's page


def _kept_since() -> datetime:
    return timezone.now() - timedelta(seconds=conf.LONGPOLL_RETENTION)


def _preview(data: Any, length: int = 80) -> str:
    return Truncator(json.dumps(data, ensure_ascii=False)).chars(length)


class HeldFilter(admin.SimpleListFilter):
    title = "poll held"
    parameter_name = "held"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("yes", "no"):
            return queryset.filter(_held=self.value() == "yes")
        return queryset


class PendingFilter(admin.SimpleListFilter):
    title = "pending messages"
    parameter_name = "pending"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "None")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        pending = Exists(
            Message.objects.filter(session=OuterRef("pk"), created_at__gte=_kept_since())
        )
        if self.value() == "yes":
            return queryset.filter(pending)
        if self.value() == "no":
            return queryset.filter(~pending)
        return queryset


class SendMessageForm(forms.Form):
    type = forms.CharField(
        max_length=100, help_text="The message type the page's listeners handle."
    )
    json_data = forms.JSONField(
        label="Data",
        required=False,
        help_text="Any JSON value (an object, a list, a string in quotes...); empty for null.",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60}),
    )

    def clean_type(self) -> str:
        try:
            return validate_type(self.cleaned_data["type"])
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


@admin.register(LongpollSession)
class LongpollSessionAdmin(admin.ModelAdmin):
    list_display = [
        "fingerprint",
        "user",
        "ip_address",
        "short_user_agent",
        "first_seen",
        "last_poll",
        "poll_held",
        "pending",
        "delivered",
    ]
    list_filter = [HeldFilter, PendingFilter]
    list_select_related = ["user"]
    search_help_text = "The first characters of a fingerprint, or a username."
    ordering = ["-pk"]
    show_full_result_count = False
    fields = SESSION_FIELDS
    readonly_fields = SESSION_FIELDS
    actions = ["send_message", "purge_pending", "release_polls"]

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        username = get_user_model().USERNAME_FIELD
        return ["fingerprint__startswith", f"user__{username}__icontains"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[LongpollSession]:
        held = HeldSession.objects.filter(
            session_pk=OuterRef("pk"), hub__updated_at__gte=stats.fresh_since()
        )
        pending = (
            Message.objects.filter(session=OuterRef("pk"), created_at__gte=_kept_since())
            .order_by()
            .values("session")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                _held=Exists(held),
                _pending=Coalesce(Subquery(pending, output_field=IntegerField()), Value(0)),
            )
        )

    # Records are the app's bookkeeping: shown, acted on, never edited or added.
    # Change permission is kept for the list (the actions need it), not for a record.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="user agent")
    def short_user_agent(self, obj: LongpollSession) -> str:
        return Truncator(obj.user_agent).chars(60)

    @admin.display(description="poll held", boolean=True)
    def poll_held(self, obj: LongpollSession) -> bool:
        return bool(getattr(obj, "_held", False))

    @admin.display(description="pending")
    def pending(self, obj: LongpollSession) -> int:
        return int(getattr(obj, "_pending", 0))

    @admin.display(description="pending messages")
    def pending_messages(self, obj: LongpollSession) -> str:
        rows = list(
            Message.objects.filter(session=obj, created_at__gte=_kept_since())
            .order_by("seq")
            .values_list("pk", "seq", "type", "data", "created_at")[: PENDING_SHOWN + 1]
        )
        if not rows:
            return "None"
        site = self.admin_site.name
        table = format_html(
            "<table><thead><tr><th>id</th><th>type</th><th>data</th><th>sent</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            format_html_join(
                "",
                '<tr><td><a href="{}">{}</a></td><td>{}</td><td><code>{}</code></td>'
                "<td>{}</td></tr>",
                (
                    (
                        reverse(f"{site}:longpoll_app_message_change", args=[pk]),
                        seq,
                        type_,
                        _preview(data),
                        created_at.isoformat(timespec="seconds"),
                    )
                    for pk, seq, type_, data, created_at in rows[:PENDING_SHOWN]
                ),
            ),
        )
        if len(rows) > PENDING_SHOWN:
            url = reverse(f"{site}:longpoll_app_message_changelist")
            table = format_html(
                '{}<p><a href="{}?session__id__exact={}">All pending messages</a></p>',
                table,
                url,
                obj.pk,
            )
        return table

    # -- actions -----------------------------------------------------------

    @admin.action(description="Send a message to the selected sessions", permissions=["change"])
    def send_message(
        self, request: HttpRequest, queryset: QuerySet[LongpollSession]
    ) -> HttpResponse | None:
        if "apply" in request.POST:
            form = SendMessageForm(request.POST)
            if form.is_valid():
                self._send(
                    request, queryset, form.cleaned_data["type"], form.cleaned_data["json_data"]
                )
                return None  # back to the list
        else:
            form = SendMessageForm()
        shown = 100
        sessions = list(queryset.select_related("user")[: shown + 1])
        total = queryset.count() if len(sessions) > shown else len(sessions)
        context = {
            **self.admin_site.each_context(request),
            "title": "Send a message",
            "opts": self.model._meta,
            "form": form,
            "sessions": sessions[:shown],
            "total": total,
            "more": total - len(sessions[:shown]),
            # Posted again as they came, so that the action sees the same
            # selection (the list's filters stay in the URL).
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(
            request, "admin/longpoll_app/longpollsession/send_message.html", context
        )

    def _send(
        self, request: HttpRequest, queryset: QuerySet[LongpollSession], type_: str, data: Any
    ) -> None:
        sent = gone = 0
        rows = list(queryset)
        live = retention.live_expiries([row.session_key for row in rows])
        for row in rows:
            if row.session_key not in live:  # its Django session ended or expired
                gone += 1
                continue
            try:
                api.send_to_session(row.session_key, type_, data)
            except LookupError:  # it ended just now
                gone += 1
                continue
            sent += 1
            self.log_change(request, row, f"Sent a {type_!r} message.")
        self.message_user(request, f"Sent {type_!r} to {sent} session(s).", messages.SUCCESS)
        if gone:
            self.message_user(
                request,
                f"{gone} session(s) were skipped: they are no longer live.",
                messages.WARNING,
            )

    @admin.action(description="Purge their pending messages", permissions=["change"])
    def purge_pending(self, request: HttpRequest, queryset: QuerySet[LongpollSession]) -> None:
        rows = list(queryset)
        removed = store.purge_pending([row.pk for row in rows])
        for row in rows:
            self.log_change(request, row, "Purged its pending messages.")
        self.message_user(
            request, f"Purged {removed} message(s) of {len(rows)} session(s).", messages.SUCCESS
        )

    @admin.action(description="End their held polls now", permissions=["change"])
    def release_polls(self, request: HttpRequest, queryset: QuerySet[LongpollSession]) -> None:
        rows = list(queryset)
        for row in rows:
            api.release_polls(row.pk, row.session_key)
        held = sum(1 for row in rows if getattr(row, "_held", False))
        self.message_user(
            request,
            f"Answered the held polls of {len(rows)} session(s) ({held} held one at the last "
            "report); their pages poll again at once.",
            messages.SUCCESS,
        )


class ExpiredFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("pending", "Pending"), ("expired", "Expired (awaiting clean-up)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "pending":
            return queryset.filter(created_at__gte=_kept_since())
        if self.value() == "expired":
            return queryset.filter(created_at__lt=_kept_since())
        return queryset


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["session_link", "seq", "type", "data_preview", "created_at", "state"]
    list_filter = [ExpiredFilter]
    list_select_related = ["session"]
    search_fields = ["=type", "session__fingerprint__startswith"]
    search_help_text = "A message type, or the first characters of a session's fingerprint."
    ordering = ["-pk"]
    show_full_result_count = False
    fields = MESSAGE_FIELDS
    readonly_fields = MESSAGE_FIELDS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Message) -> None:
        store.discard_messages([obj.pk])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        store.discard_messages(list(queryset.values_list("pk", flat=True)))

    @admin.display(description="session", ordering="session")
    def session_link(self, obj: Message) -> str:
        url = reverse(
            f"{self.admin_site.name}:longpoll_app_longpollsession_change", args=[obj.session_id]
        )
        return format_html('<a href="{}">{}</a>', url, obj.session.fingerprint)

    @admin.display(description="data")
    def data_preview(self, obj: Message) -> str:
        return _preview(obj.data)

    @admin.display(description="data")
    def data_json(self, obj: Message) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.data, indent=2, ensure_ascii=False))

    @admin.display(description="state")
    def state(self, obj: Message) -> str:
        return "expired" if obj.created_at < _kept_since() else "pending"
