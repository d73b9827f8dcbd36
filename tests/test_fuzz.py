"""Property-based fuzzing of both endpoints: whatever arrives, the answer is a
documented status with the documented JSON body; never a 500, never a hang."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from .conftest import Browser

DOCUMENTED = {200, 204, 400, 403, 405, 413, 429}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
poll_bodies = st.fixed_dictionaries({}, optional={"cursor": json_values, "extra": json_values})
send_bodies = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=80) | json_values,
        "type": st.sampled_from(["demo.echo", "nope"]) | st.text(max_size=120) | json_values,
        "data": json_values,
    },
)
raw_bodies = st.binary(max_size=300) | st.text(max_size=300).map(str.encode)


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    path = draw(st.sampled_from(["/longpoll/poll/", "/longpoll/send/"]))
    body_kind = draw(st.sampled_from(["poll", "send", "raw", "big"]))
    if body_kind == "poll":
        body = json.dumps(draw(poll_bodies)).encode()
    elif body_kind == "send":
        body = json.dumps(draw(send_bodies)).encode()
    elif body_kind == "big":
        body = b'{"id": "x", "type": "t", "data": "' + b"a" * 70_000 + b'"}'
    else:
        body = draw(raw_bodies)
    headers = {
        "content-type": draw(st.sampled_from(["application/json", "text/plain", "", "x/y; q=1"])),
    }
    if draw(st.booleans()):
        headers["x-csrftoken"] = draw(st.text(alphabet="abcdefABCDEF0123456789", max_size=70))
    if draw(st.booleans()):
        headers["origin"] = draw(st.sampled_from(["http://testserver", "null", "http://evil", ""]))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]))
    return {"path": path, "body": body, "headers": headers, "method": method}


@hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
async def test_any_request_gets_a_documented_answer(
    browser: Browser, request: dict[str, Any], settings: Any
) -> None:
    settings.LONGPOLL_TIMEOUT = 0.05
    settings.LONGPOLL_SEND_BURST = 10_000  # rate limiting is tested on its own
    response = await browser.request(
        request["body"],
        timeout=3.0,
        path=request["path"],
        method=request["method"],
        headers=request["headers"],
    )
    assert response.status in DOCUMENTED, (response.status, response.body)
    assert response.headers["cache-control"] == "no-store"
    if response.status in (204, 304):
        assert response.body == b""
        return
    payload = response.json()
    if response.status == 200:
        assert set(payload) in ({"messages", "cursor", "gap"}, {"ok"}, {"ok", "duplicate"})
    else:
        assert set(payload) == {"error", "detail"}
        assert payload["error"] and payload["detail"]
