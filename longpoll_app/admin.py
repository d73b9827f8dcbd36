"""The Django admin for the long-poll sessions and their queued messages.

A session key is a bearer credential: no page here shows one, and no URL
filters by one (``SessionKeyGuardAdmin``). Sessions are named by
``fingerprint`` (a sha256 prefix) and found by it or by username.
The records are the app's own bookkeeping, so they cannot be added or edited
here; the admin acts on them through actions that keep the hubs in step.

How fresh each column is (see also docs/admin.md):

* user, IP address, user agent: written when a poll's check of its session
  finds they changed, and at login; last poll: at such a check when older than
  ``sessions.LAST_POLL_PRECISION``;
* poll held: from each process's last report (every
  ``LONGPOLL_STATUS_INTERVAL`` seconds);
* pending, delivered: read from the database when the page is shown
  (``delivered`` is written ``hub.ACK_DELAY`` after the acknowledging poll).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db.models import (
    Count,
    Exists,
    IntegerField,
    JSONField,
    Model,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.constants import LOOKUP_SEP
from django.db.models.functions import Coalesce
from django.forms.fields import InvalidJSONInput
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from . import api, queue, sessions, stats
from .models import HeldSession, LongpollSession, Message
from .protocol import MAX_DATA_DEPTH, UNSTORABLE, check_data, validate_type

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


def _json_text(data: Any, **options: Any) -> str:
    """``data`` as JSON text for a page: a lone surrogate (only in a row stored
    before the app refused them) is shown as its escape, not a 500."""
    text = json.dumps(data, ensure_ascii=False, **options)
    return text if not UNSTORABLE.search(text) else json.dumps(data, **options)


def _preview(data: Any, length: int = 80) -> str:
    return Truncator(_json_text(data)).chars(length)


def _is_session_key(field: Any) -> bool:
    return (
        getattr(field, "concrete", False)
        and field.model._meta.concrete_model is LongpollSession
        and field.name == "session_key"
    )


def names_session_key(model: type[Model], path: str) -> bool:
    """Whether a lookup path (``user__longpoll_sessions__session_key__lt``...)
    reaches ``LongpollSession.session_key`` at any step.

    The path is walked field by field through ``_meta.get_field``, as Django's
    own ``lookup_allowed`` does, rather than matched as a string, so every
    spelling the ORM accepts is caught: any lookup or transform after the
    field (``__startswith``, ``__lt``, ``__regex``, one registered later...),
    any chain of relations before it (``session__user__longpoll_sessions__``)
    and a relation whose value is the key (a foreign key with
    ``to_field="session_key"``). A part that names no field ends the walk: it
    is a lookup or transform name, or the ORM rejects it anyway.
    """
    return _reaches(model, path, _is_session_key)


def _crashes(model: type[Model], path: str) -> bool:
    """Whether a URL filter would fail inside the query rather than be refused:
    ``__range`` (the admin passes its value on as one string) and lookups into
    JSON data (``data__contains`` is not supported on SQLite)."""
    return path.rsplit(LOOKUP_SEP, 1)[-1] == "range" or _reaches(
        model, path, lambda field: isinstance(field, JSONField)
    )


def _reaches(model: type[Model], path: str, wanted: Callable[[Any], bool]) -> bool:
    opts = model._meta
    for part in path.split(LOOKUP_SEP):
        try:
            field: Any = opts.pk if part == "pk" else opts.get_field(part)
        except FieldDoesNotExist:
            return False  # a lookup or transform name (or no field): the walk ends
        if wanted(field):
            return True
        path_infos = getattr(field, "path_infos", None)
        if not path_infos:
            return False  # a plain field: the rest are lookups and transforms on it
        if any(wanted(target) for target in path_infos[-1].target_fields):
            return True
        opts = path_infos[-1].to_opts
    return False


if TYPE_CHECKING:  # generic only to django-stubs: subscripting it at run time fails
    ModelAdmin = admin.ModelAdmin[Any]
else:
    ModelAdmin = admin.ModelAdmin


class SessionKeyGuardAdmin(ModelAdmin):
    """Refuses every lookup on a session key, in the URL of any page.

    A session key is a bearer credential. Django's ``lookup_allowed`` lets any
    staff user who can view a list filter it by any local field, so
    ``?session_key__startswith=ab`` (or ``__lt``, ``__regex``...) answered
    "some rows" or "none", and a binary search read a whole key in a few
    hundred requests. Here a filter (``lookup_allowed``: the list answers 400,
    and so does an action on it) or a ``_to_field`` (``to_field_allowed``: the
    popup, autocomplete and change views) that reaches the key by any path is
    refused first, before Django's own rules, which would let some through
    (a local field; a ``limit_choices_to`` lookup of a foreign key). So is a
    filter that would fail inside the query (``_crashes``): 400, not 500.
    """

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        if names_session_key(self.model, lookup) or _crashes(self.model, lookup):
            return False
        return super().lookup_allowed(lookup, value, request)

    def to_field_allowed(self, request: HttpRequest, to_field: str) -> bool:
        if names_session_key(self.model, to_field):
            return False
        return super().to_field_allowed(request, to_field)


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
            Message.objects.filter(session=OuterRef("pk"), created_at__gte=queue.oldest_kept())
        )
        if self.value() == "yes":
            return queryset.filter(pending)
        if self.value() == "no":
            return queryset.filter(~pending)
        return queryset


class MessageDataField(forms.JSONField):
    """A ``JSONField`` that refuses what ``send_to_session`` would refuse, and
    shows a refused value back as it came (Django's field lets json.loads's
    RecursionError out, and re-renders a lone surrogate it cannot encode)."""

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError:
            raise ValidationError(
                f"The data is nested more than {MAX_DATA_DEPTH} levels deep."
            ) from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)

    def validate(self, value: Any) -> None:
        super().validate(value)
        try:
            check_data(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(str(exc)) from None

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, InvalidJSONInput):
            return value
        return _json_text(value)


class SendMessageForm(forms.Form):
    type = forms.CharField(
        max_length=100, help_text="The message type the page's listeners handle."
    )
    json_data = MessageDataField(
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
class LongpollSessionAdmin(SessionKeyGuardAdmin):
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
            Message.objects.filter(session=OuterRef("pk"), created_at__gte=queue.oldest_kept())
            .order_by()
            .values("session")
            .annotate(n=Count("pk"))
            .values("n")
        )
        rows = cast("QuerySet[LongpollSession]", super().get_queryset(request))
        return rows.annotate(
            _held=Exists(held),
            _pending=Coalesce(Subquery(pending, output_field=IntegerField()), Value(0)),
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
            Message.objects.filter(session=obj, created_at__gte=queue.oldest_kept())
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
        chosen = list(queryset.select_related("user")[: shown + 1])
        total = queryset.count() if len(chosen) > shown else len(chosen)
        context = {
            **self.admin_site.each_context(request),
            "title": "Send a message",
            "opts": self.model._meta,
            "form": form,
            "sessions": chosen[:shown],
            "total": total,
            "more": total - len(chosen[:shown]),
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
        live = sessions.live_expiries([row.session_key for row in rows])
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
        removed = queue.purge_pending([row.pk for row in rows])
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
            return queryset.filter(created_at__gte=queue.oldest_kept())
        if self.value() == "expired":
            return queryset.filter(created_at__lt=queue.oldest_kept())
        return queryset


@admin.register(Message)
class MessageAdmin(SessionKeyGuardAdmin):
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
        queue.discard_messages([obj.pk])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        queue.discard_messages(list(queryset.values_list("pk", flat=True)))

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
        return format_html("<pre>{}</pre>", _json_text(obj.data, indent=2))

    @admin.display(description="state")
    def state(self, obj: Message) -> str:
        return "expired" if obj.created_at < queue.oldest_kept() else "pending"
