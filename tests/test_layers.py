"""The hub's channels-redis layer blocks for less than its sockets' timeout."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from longpoll_app import layers
from longpoll_app.layers import fit_blocking_receive

URL = "redis://127.0.0.1:6379/14"


def redis_py_default_timeout() -> float | None:
    from redis.asyncio import Connection

    default = Connection().socket_timeout  # never connected
    return None if default is None else float(default)


def fitted(*hosts: Any) -> float:
    layer = RedisChannelLayer(hosts=list(hosts))
    fit_blocking_receive(layer)
    return float(layer.brpop_timeout)


def test_a_plain_url_blocks_for_half_of_redis_pys_own_timeout() -> None:
    default = redis_py_default_timeout()
    if default is None or default > RedisChannelLayer.brpop_timeout:
        assert fitted(URL) == RedisChannelLayer.brpop_timeout  # nothing to fit
    else:
        assert fitted(URL) == int(default / 2)
        assert 0 < fitted(URL) < default


@pytest.mark.parametrize(
    ("host", "blocking"),
    [
        (f"{URL}?socket_timeout=3", 1),  # whole seconds from 1 s: older Redis wants them
        (f"{URL}?socket_timeout=1", 0.5),
        ({"address": URL, "socket_timeout": 0.4}, 0.2),
        ({"host": "127.0.0.1", "port": 6379, "socket_timeout": 2}, 1),
        ({"sentinels": [("127.0.0.1", 26379)], "master_name": "m", "socket_timeout": 1}, 0.5),
        ({"address": URL, "socket_timeout": 15}, RedisChannelLayer.brpop_timeout),
        ({"address": URL, "socket_timeout": 8}, 4),  # longer than the receive, not by twice
        ({"address": URL, "socket_timeout": None}, RedisChannelLayer.brpop_timeout),
    ],
)
def test_the_socket_timeout_is_read_where_redis_py_reads_it(host: Any, blocking: float) -> None:
    assert fitted(host) == blocking


def test_the_shortest_host_decides() -> None:
    assert fitted({"address": URL, "socket_timeout": 15}, f"{URL}?socket_timeout=1") == 0.5


def test_the_project_settings_are_left_as_they_were() -> None:
    host = {"address": URL, "socket_timeout": 1}
    layer = RedisChannelLayer(hosts=[host])
    fit_blocking_receive(layer)
    assert host == {"address": URL, "socket_timeout": 1}
    assert RedisChannelLayer.brpop_timeout == 5  # the class, and so other layers, unchanged


def test_a_host_it_cannot_make_a_pool_for_is_left_to_fail_at_its_first_receive() -> None:
    layer = RedisChannelLayer(hosts=[{"address": "nonsense://"}])
    fit_blocking_receive(layer)
    assert layer.brpop_timeout == RedisChannelLayer.brpop_timeout


def test_other_layers_are_left_alone() -> None:
    layer = InMemoryChannelLayer()
    fit_blocking_receive(layer)
    assert not hasattr(layer, "brpop_timeout")


SENTINEL = {"sentinels": [("127.0.0.1", 26379)], "master_name": "mymaster"}


def test_a_sentinel_host_is_fitted_to_its_masters_connections() -> None:
    # As channels-redis documents it, with nothing about timeouts: the master's
    # connections get redis-py's own default, as a plain URL's do.
    assert fitted(SENTINEL) == fitted(URL)
    assert fitted({**SENTINEL, "socket_timeout": 3}) == 1


def test_the_sentinels_own_timeouts_do_not_count() -> None:
    # sentinel_kwargs reach only the queries to the sentinels, never the blocking receive.
    quick_sentinels = {**SENTINEL, "sentinel_kwargs": {"socket_timeout": 0.2}}
    assert fitted(quick_sentinels) == fitted(URL)
    patient_master = {**quick_sentinels, "socket_timeout": 15}
    assert fitted(patient_master) == RedisChannelLayer.brpop_timeout


def test_fitting_a_sentinel_host_asks_no_sentinel() -> None:
    # A layer is fitted when the hub starts: it must not wait on a sentinel there.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        host = {"sentinels": [("127.0.0.1", port)], "master_name": "mymaster"}
        assert fitted(host) == fitted(URL)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


def test_a_sentinel_host_without_sentinels_is_left_to_fail_at_its_first_receive() -> None:
    layer = RedisChannelLayer(hosts=[{"master_name": "mymaster"}])
    fit_blocking_receive(layer)
    assert layer.brpop_timeout == RedisChannelLayer.brpop_timeout


async def test_a_pubsub_layer_through_sentinel_is_left_alone() -> None:
    # It reads with get_message(timeout=0.1), not a blocking pop: nothing to fit.
    # (Async: it makes its per-loop layer on first use, and connects later still.)
    layer = RedisPubSubChannelLayer(hosts=[SENTINEL])
    fit_blocking_receive(layer)
    assert not hasattr(layer, "brpop_timeout")


class LocalLayer(InMemoryChannelLayer):
    """An in-memory layer under a path of its own: only its class tells."""


REDIS = {"hosts": ["redis://127.0.0.1:1/0"]}  # never connected to here


@pytest.mark.parametrize(
    ("backend", "shared"),
    [
        ("channels_redis.core.RedisChannelLayer", True),
        ("channels_redis.pubsub.RedisPubSubChannelLayer", True),
        ("channels.layers.InMemoryChannelLayer", False),
        (f"{__name__}.LocalLayer", False),
    ],
)
def test_has_shared_layer_answers_as_shared_layer_does(
    settings: Any, backend: str, shared: bool
) -> None:
    config = {"CONFIG": REDIS} if backend.startswith("channels_redis") else {}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": backend, **config}}
    assert layers.has_shared_layer() is shared
    assert (layers.shared_layer() is not None) is shared


def test_has_shared_layer_makes_no_channels_redis_layer(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Making it imports channels-redis and redis-py: a fresh process's first
    # send must not wait for that (the send loop makes it).
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": REDIS}
    }
    monkeypatch.setattr(layers, "shared_layer", lambda: pytest.fail("the layer was made"))
    assert layers.has_shared_layer()


def test_no_layer_of_the_alias_is_no_shared_layer(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {}
    assert not layers.has_shared_layer()
