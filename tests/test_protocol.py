"""longpoll_app.protocol on its own: what each parser takes, and the status, code
and detail of each refusal (docs/protocol.md, "Errors").

The endpoints' tests (test_consumers, test_security_review, test_fuzz) send
bodies through the ASGI application and accept any 400 of a few codes for some
classes of bad input; these pin each class to its one code, at the boundaries.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from longpoll_app.protocol import (
    CLIENT_ID,
    MAX_CURSOR,
    MAX_DATA_DEPTH,
    MAX_TYPE_LENGTH,
    RESERVED_TYPES,
    UNSTORABLE,
    ProtocolError,
    check_data,
    dumps,
    parse_client_message,
    parse_cursor,
    parse_object,
    too_many,
    validate_type,
)


def nested(depth: int, leaf: Any = 0) -> Any:
    """``leaf`` inside ``depth`` arrays."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    return "[" * depth + "0" + "]" * depth


def refusal(call: Any, *args: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        call(*args)
    error = caught.value
    assert error.status == 400, error.answer()
    assert error.detail, "every refusal says what was wrong"
    return error


# -- parse_object --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"cursor": null}', {"cursor": None}),
        (b"{}", {}),
        (b' \n\t{"a": 1}\r\n ', {"a": 1}),  # JSON's own whitespace around the value
        (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),  # one leading UTF-8 BOM is ignored
        ('{"a": "é ✓ \U0001f600"}'.encode(), {"a": "é ✓ \U0001f600"}),
        # An escaped surrogate pair is one astral character, not a lone surrogate.
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),
        (b'{"a": 1, "a": 2}', {"a": 2}),  # duplicate keys: the last one, as json.loads does
        (b'{"n": 1180591620717411303424, "m": -1}', {"n": 2**70, "m": -1}),
        (b'{"f": 1.5e300, "z": -0.0}', {"f": 1.5e300, "z": -0.0}),
        (b'{"b": [true, false, null, "", [], {}]}', {"b": [True, False, None, "", [], {}]}),
    ],
)
def test_parse_object_takes_strict_json_objects(body: bytes, expected: dict[str, Any]) -> None:
    assert parse_object(body) == expected


def test_parse_object_takes_the_deepest_nesting_docs_allow() -> None:
    # 64 levels inside the body's object: docs/protocol.md's limit, exactly.
    body = f'{{"a": {nested_text(MAX_DATA_DEPTH)}}}'.encode()
    assert parse_object(body) == {"a": nested(MAX_DATA_DEPTH)}
    as_objects = '{"a": ' * MAX_DATA_DEPTH + "0" + "}" * MAX_DATA_DEPTH
    assert parse_object(f'{{"x": {as_objects}}}'.encode())["x"]["a"]["a"]


@pytest.mark.parametrize(
    "body",
    [
        '{"a": "\xe9"}'.encode("latin-1"),  # é as Latin-1: not UTF-8
        '{"a": 1}'.encode("utf-16"),  # UTF-16 with its BOM
        b'{"a": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 (CESU-8): not UTF-8
        b'{"a": "\xc0\xaf"}',  # an overlong encoding of "/"
        b'{"a": "\xff"}',
    ],
    ids=["latin-1", "utf-16", "cesu-8", "overlong", "xff"],
)
def test_parse_object_refuses_what_is_not_utf8(body: bytes) -> None:
    error = refusal(parse_object, body)
    assert (error.code, error.detail) == ("invalid_json", "The body is not UTF-8 text.")


@pytest.mark.parametrize(
    ("body", "constant"),
    [
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "-Infinity"),
        (b'{"a": [1, {"b": NaN}]}', "NaN"),
    ],
)
def test_parse_object_refuses_nan_and_infinity_as_invalid_json(body: bytes, constant: str) -> None:
    error = refusal(parse_object, body)
    assert error.code == "invalid_json"
    assert f"{constant} is not a JSON number" in error.detail


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b"{'a': 1}",  # Python's quotes, not JSON's
        b'{"a": 1,}',  # a trailing comma
        b'{"a": 1}{"b": 2}',  # two values
        b'{"a": 01}',
        b'{"a": "\x01"}',  # a raw control character inside a string
        b'\xef\xbb\xbf\xef\xbb\xbf{"a": 1}',  # only one BOM is ignored
    ],
)
def test_parse_object_refuses_malformed_json(body: bytes) -> None:
    error = refusal(parse_object, body)
    assert error.code == "invalid_json"
    assert error.detail.startswith("The body is not valid JSON: ")


def test_parse_object_refuses_an_integer_python_will_not_read() -> None:
    # Valid JSON, but past Python's 4300-digit limit for reading integers: refused
    # as unreadable (not a 500), and the body is not echoed back in the detail.
    digits = "9" * 5000
    error = refusal(parse_object, f'{{"cursor": {digits}}}'.encode())
    assert error.code == "invalid_json"
    assert digits not in error.detail and len(error.detail) < 300


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"[]", "an array"),
        (b'"{}"', "a string"),
        (b"7", "an integer"),
        (b"7.5", "a number with a fraction"),
        (b"true", "a boolean"),
        (b"null", "null"),
    ],
)
def test_parse_object_refuses_json_that_is_not_an_object(body: bytes, kind: str) -> None:
    error = refusal(parse_object, body)
    assert error.code == "invalid_body"
    assert error.detail == f"The body must be a JSON object, not {kind}."


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"a": "x\\u0000y"}', '["a"]'),
        (b'{"a": "\\ud800"}', '["a"]'),  # a lone high surrogate
        (b'{"a": ["ok", "\\udfff"]}', '["a"][1]'),  # a lone low surrogate
        (b'{"a": "\\ude00\\ud83d"}', '["a"]'),  # a pair in the wrong order is two lone ones
        (b'{"a": {"k\\u0000": 1}}', '["a"]["k\\u0000"]'),
        (b'{"\\ud83d": 1}', '["\\ud83d"]'),
    ],
)
def test_parse_object_refuses_unstorable_strings_and_keys_and_says_where(
    body: bytes, where: str
) -> None:
    error = refusal(parse_object, body)
    assert error.code == "invalid_data"
    assert error.detail.startswith(f"The body{where} ")
    assert "NUL or a lone surrogate" in error.detail


def test_parse_object_refuses_a_number_that_overflows_to_infinity() -> None:
    # json.loads reads 1e400 as inf without calling parse_constant: the walk catches it.
    error = refusal(parse_object, b'{"a": [1e400]}')
    assert error.code == "invalid_data"
    assert error.detail == 'The body["a"][0] is inf, which is not a JSON number.'


@pytest.mark.parametrize("depth", [MAX_DATA_DEPTH + 1, 500])
def test_parse_object_refuses_nesting_past_the_limit_as_invalid_data(depth: int) -> None:
    error = refusal(parse_object, f'{{"a": {nested_text(depth)}}}'.encode())
    assert error.code == "invalid_data"
    assert f"nested more than {MAX_DATA_DEPTH} levels deep" in error.detail


def test_parse_object_refuses_nesting_the_parser_cannot_follow_as_invalid_json() -> None:
    error = refusal(parse_object, nested_text(100_000).encode())
    assert (error.code, error.detail) == ("invalid_json", "The body is nested too deeply.")


# -- check_data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**63),
        2**70,  # JSON has no integer limit; the database stores data as JSON text
        1.5,
        -0.0,
        "",
        "é ✓ \U0001f600 \ud7ff \ue000",  # just outside the surrogate block, on both sides
        [],
        {},
        (1, 2),  # tuples are written as arrays
        {7: "int keys become strings", None: "null", False: "false"},
        nested(MAX_DATA_DEPTH),
    ],
)
def test_check_data_takes_what_strict_json_can_carry(value: Any) -> None:
    check_data(value)


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (math.nan, "data "),
        (math.inf, "data "),
        (-math.inf, "data "),
        ("a\x00b", "data "),
        ("\ud800", "data "),
        ("\udfff", "data "),
        ({"k\x00": 1}, 'data["k\\u0000"] '),
        ({"a": [1, {"b": "\ud83d"}]}, 'data["a"][1]["b"] '),
        ((0, (1, math.nan)), "data[1][1] "),
        (nested(MAX_DATA_DEPTH + 1), "data" + "[0]" * MAX_DATA_DEPTH + " "),
    ],
)
def test_check_data_refuses_the_unstorable_with_a_value_error_that_says_where(
    value: Any, where: str
) -> None:
    with pytest.raises(ValueError) as caught:
        check_data(value)
    assert str(caught.value).startswith(where), str(caught.value)


def test_check_data_names_the_caller_and_shortens_long_keys() -> None:
    with pytest.raises(ValueError) as caught:
        check_data({"k" * 100: [math.inf]}, where="messages[3]")
    # The key is cut to 36 characters after its opening quote: details stay short.
    assert str(caught.value) == (
        'messages[3]["' + "k" * 36 + "...][0] is inf, which is not a JSON number."
    )


def test_check_data_refuses_a_cycle_as_too_deep_rather_than_recursing() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match=f"nested more than {MAX_DATA_DEPTH} levels deep"):
        check_data(loop)


def test_check_data_depth_is_the_callers() -> None:
    check_data(nested(3), depth=3)
    with pytest.raises(ValueError, match="nested more than"):
        check_data(nested(4), depth=3)


@pytest.mark.parametrize(
    "value",
    [b"bytes", {1, 2}, object(), 1 + 2j, {(1, 2): "tuple key"}, {"a": [b"deep"]}],
    ids=["bytes", "set", "object", "complex", "tuple-key", "nested-bytes"],
)
def test_check_data_refuses_what_json_cannot_write_with_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match=r"^data is not JSON-serializable: "):
        check_data(value)


@pytest.mark.parametrize(
    "value",
    [10**5000, {math.nan: 1}, {math.inf: 1}],
    ids=["5000-digit-int", "nan-key", "inf-key"],
)
def test_check_data_refuses_what_json_cannot_write_with_a_value_error(value: Any) -> None:
    # Neither is judged by the walk: json.dumps (strict) refuses them.
    with pytest.raises(ValueError, match=r"^data is not JSON-serializable: "):
        check_data(value)


@pytest.mark.parametrize(
    ("text", "unstorable"),
    [
        ("\x00", True),
        ("a\x00", True),
        ("\ud800", True),
        ("\udbff\udc00", True),  # a pair written as two code points is two lone surrogates
        ("\udfff", True),
        ("\ud7ff", False),
        ("\ue000", False),
        ("\x01\x1f\x7f", False),  # other control characters are escaped by JSON, not lost
        ("\U0001f600", False),
        ("\U0010ffff", False),
    ],
)
def test_unstorable_is_nul_and_lone_surrogates_only(text: str, unstorable: bool) -> None:
    assert bool(UNSTORABLE.search(text)) is unstorable


# -- parse_cursor ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "cursor"),
    [
        ({}, None),
        ({"cursor": None}, None),
        ({"cursor": 0}, 0),
        ({"cursor": MAX_CURSOR}, MAX_CURSOR),
    ],
)
def test_parse_cursor_takes_null_and_the_whole_id_range(
    payload: dict[str, Any], cursor: int | None
) -> None:
    assert parse_cursor(payload) == cursor


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (1.0, "a number with a fraction"),
        ([1], "an array"),
        ({"id": 1}, "an object"),
    ],
)
def test_parse_cursor_refuses_other_json_types_naming_them(value: Any, kind: str) -> None:
    error = refusal(parse_cursor, {"cursor": value})
    assert error.code == "invalid_cursor"
    assert error.detail == f"cursor must be an integer or null, not {kind}."


def test_parse_cursor_refuses_one_past_the_largest_id() -> None:
    error = refusal(parse_cursor, {"cursor": MAX_CURSOR + 1})
    assert error.code == "invalid_cursor"
    assert error.detail == f"cursor must be between 0 and {MAX_CURSOR}, not {MAX_CURSOR + 1}."
    assert MAX_CURSOR == 2**63 - 1  # docs/protocol.md: "from 0 to 2^63-1"


def test_parse_cursor_lists_unknown_fields_sorted() -> None:
    error = refusal(parse_cursor, {"zeta": 1, "cursor": 1, "alpha": 2})
    assert (error.code, error.detail) == ("invalid_body", "Unknown field(s): alpha, zeta.")


# -- parse_client_message ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [None, 0, "text", [1, [2]], {"nested": {"ok": True}}],
)
def test_parse_client_message_hands_data_back_as_it_is(data: Any) -> None:
    payload = {"id": "m-1", "type": "chat.message", "data": data}
    assert parse_client_message(payload) == ("m-1", "chat.message", data)


def test_parse_client_message_data_may_be_left_out() -> None:
    assert parse_client_message({"id": "m", "type": "t"}) == ("m", "t", None)


@pytest.mark.parametrize(
    "client_id",
    ["a", "A-Z_a.z:0-9", "x" * 64, "2024-01-01T00:00:00.000Z", "0123456789"],
)
def test_parse_client_message_takes_every_documented_id(client_id: str) -> None:
    assert CLIENT_ID.fullmatch(client_id)
    assert parse_client_message({"id": client_id, "type": "t"})[0] == client_id


@pytest.mark.parametrize(
    "client_id",
    [
        None,  # missing
        "x" * 65,
        "a\n",  # a trailing newline is not matched as the end
        "a/b",
        "é",
        "a\x00",
        ["a"],
        {"id": "a"},
        1.0,
        True,
    ],
)
def test_parse_client_message_refuses_other_ids(client_id: Any) -> None:
    payload = {"type": "t"} if client_id is None else {"id": client_id, "type": "t"}
    error = refusal(parse_client_message, payload)
    assert error.code == "invalid_id"
    assert error.detail.startswith("id must be 1-64 characters of A-Z a-z 0-9 _ . : -, not ")


def test_an_id_refusal_does_not_echo_a_long_id() -> None:
    error = refusal(parse_client_message, {"id": "x" * 10_000, "type": "t"})
    assert error.detail.endswith('not "' + "x" * 36 + "....")
    assert len(error.detail) < 100


@pytest.mark.parametrize("message_type", ["t", "x" * MAX_TYPE_LENGTH, "chat.message", "é ✓"])
def test_parse_client_message_takes_types_of_1_to_100_characters(message_type: str) -> None:
    assert parse_client_message({"id": "m", "type": message_type})[1] == message_type


@pytest.mark.parametrize("message_type", [None, 5, False, {}])
def test_parse_client_message_refuses_other_types(message_type: Any) -> None:
    payload: dict[str, Any] = {"id": "m"}
    if message_type is not None:
        payload["type"] = message_type
    error = refusal(parse_client_message, payload)
    assert error.code == "invalid_type"
    assert error.detail.startswith(f"type must be a string of 1-{MAX_TYPE_LENGTH} characters, not ")


def test_parse_client_message_checks_fields_then_id_then_type() -> None:
    # The first thing wrong is the one reported, in the order the fields are documented.
    assert refusal(parse_client_message, {"id": 1, "type": 2, "x": 3}).code == "invalid_body"
    assert refusal(parse_client_message, {"id": 1, "type": 2}).code == "invalid_id"
    error = refusal(parse_client_message, {"id": "m", "type": "t", "b": 1, "a": 2})
    assert error.detail == "Unknown field(s): a, b."


# -- validate_type -----------------------------------------------------------------------


@pytest.mark.parametrize("message_type", ["t", "x" * MAX_TYPE_LENGTH, "status.update", "Status"])
def test_validate_type_returns_a_good_type(message_type: str) -> None:
    assert validate_type(message_type) == message_type


@pytest.mark.parametrize(
    "message_type", [None, 1, b"bytes", ["t"], "", "x" * (MAX_TYPE_LENGTH + 1)]
)
def test_validate_type_refuses_what_is_not_a_type(message_type: Any) -> None:
    with pytest.raises(ValueError, match=f"must be a string of 1-{MAX_TYPE_LENGTH} characters"):
        validate_type(message_type)


@pytest.mark.parametrize("message_type", ["a\x00", "\ud800", "x\udfff"])
def test_validate_type_refuses_what_json_cannot_carry(message_type: str) -> None:
    with pytest.raises(ValueError, match="NUL or a lone surrogate"):
        validate_type(message_type)


# longpoll.js's own events (docs/client.md): a server message of one of these types
# would be taken for the client's event.
@pytest.mark.parametrize("message_type", ["status", "gap", "error", "*"])
def test_validate_type_refuses_the_clients_own_event_names(message_type: str) -> None:
    assert message_type in RESERVED_TYPES
    with pytest.raises(ValueError, match=r"reserved for longpoll\.js's own events"):
        validate_type(message_type)


# -- dumps -------------------------------------------------------------------------------


def test_dumps_writes_compact_utf8() -> None:
    assert dumps({"a": [1, 2.5, None], "é": "✓"}) == '{"a":[1,2.5,null],"é":"✓"}'.encode()


def test_dumps_writes_a_lone_surrogate_as_its_escape() -> None:
    # Only a row stored before check_data refused them can hold one: it still goes out.
    out = dumps({"data": "é\ud800"})
    assert out == b'{"data":"\\u00e9\\ud800"}'
    assert json.loads(out) == {"data": "é\ud800"}


@pytest.mark.parametrize("value", [math.nan, math.inf, [-math.inf]])
def test_dumps_refuses_nan_and_infinity(value: Any) -> None:
    with pytest.raises(ValueError):
        dumps(value)


def test_dumps_refuses_what_json_cannot_write() -> None:
    with pytest.raises(TypeError):
        dumps({"a": object()})


# -- ProtocolError and too_many ------------------------------------------------------------


def test_a_protocol_error_answers_with_its_status_body_and_headers() -> None:
    error = ProtocolError(418, "teapot", "Short and stout.", {"X-Why": "tea"})
    assert str(error) == "Short and stout."
    assert error.body() == {"error": "teapot", "detail": "Short and stout."}
    assert error.answer() == (
        418,
        {"error": "teapot", "detail": "Short and stout."},
        {"X-Why": "tea"},
    )


def test_protocol_errors_do_not_share_headers() -> None:
    first, second = ProtocolError(400, "a", "A."), ProtocolError(400, "b", "B.")
    assert first.answer()[2] == {}
    first.headers["Connection"] = "close"
    assert second.headers == {}


@pytest.mark.parametrize(
    ("retry_after", "header"), [(0.0, "1"), (0.01, "1"), (0.9, "1"), (1.0, "1"), (3.0, "3")]
)
def test_too_many_is_429_with_a_whole_retry_after_of_at_least_a_second(
    retry_after: float, header: str
) -> None:
    error = too_many("rate_limited", "Slow down.", retry_after)
    assert error.answer() == (
        429,
        {"error": "rate_limited", "detail": "Slow down."},
        {"Retry-After": header},
    )


@pytest.mark.parametrize("retry_after", [1.4, 2.5])
def test_retry_after_is_never_shorter_than_the_wait(retry_after: float) -> None:
    header = too_many("rate_limited", "Slow down.", retry_after).headers["Retry-After"]
    assert int(header) >= retry_after
