"""manage.py longpoll_send."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from longpoll_app.models import Message

from .conftest import new_session_key


def run(*args: str) -> str:
    out = StringIO()
    call_command("longpoll_send", *args, stdout=out)
    return out.getvalue()


def test_sends_to_a_session_key(transactional_db: None) -> None:
    key = new_session_key()
    assert "Sent message 1" in run(key, "notice", '{"text": "hi"}')
    assert key not in run(key, "notice")  # only the fingerprint is printed
    assert list(Message.objects.values_list("type", "data")) == [
        ("notice", {"text": "hi"}),
        ("notice", None),
    ]


def test_sends_to_a_user(transactional_db: None, django_user_model: Any, client: Any) -> None:
    django_user_model.objects.create_user("ada", password="pw-ada-123")
    client.login(username="ada", password="pw-ada-123")
    assert "Sent to 1 live session(s) of ada" in run("--user", "ada", "notice", "[1]")
    assert Message.objects.get().data == [1]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("notice",), "Usage"),
        (("--user", "nobody", "notice"), "No user has the username 'nobody'"),
        (("x" * 32, "notice"), "No live session"),
        (("KEY", "notice", "{bad"), "JSON_DATA is not valid JSON"),
        (("KEY", "", "1"), "Message type must be"),
    ],
)
def test_bad_arguments_say_what_is_wrong(transactional_db: None, args: Any, error: str) -> None:
    key = new_session_key()
    args = tuple(key if a == "KEY" else a for a in args)
    with pytest.raises(CommandError, match=error):
        run(*args)
