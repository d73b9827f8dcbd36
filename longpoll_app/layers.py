"""Which channel layer carries the wake-ups, and what the app adjusts in it.

channels-redis receives with one blocking ``BZPOPMIN`` of ``brpop_timeout``
seconds (5). redis-py 8 gives every socket read a 5 s timeout by default, so
with a plain ``"hosts": ["redis://..."]`` each idle receive would end in
``TimeoutError`` (channels_redis issue 422): an outage every 5 s. Instead of
asking every project to raise the socket timeout, the hub's layer blocks for
half of the shortest socket timeout of its hosts, so a read always answers
before its socket gives up. An idle process then asks Redis a little more often;
nothing else changes.

A host given in channels-redis's Sentinel form (``"sentinels"``, ``"master_name"``)
is fitted the same way: its pool connects to whichever master the sentinels name
with the host's other keys, ``socket_timeout`` included, which is what the
blocking receive waits on. ``"sentinel_kwargs"`` only reach the short queries to
the sentinels themselves, so they do not count.
"""

from __future__ import annotations

import math
from typing import Any

from channels.layers import (
    BaseChannelLayer,
    InMemoryChannelLayer,
    channel_layers,
    get_channel_layer,
)

from .conf import conf

BLOCKING_SHARE = 0.5  # of the socket timeout: the rest is room for the reply
WHOLE_SECONDS_FROM = 1.0  # seconds: from there on whole seconds, as every Redis takes
# Below it, fractions, which Redis 6 and newer take (a socket timeout under 2 s).


def fit_blocking_receive(layer: BaseChannelLayer) -> None:
    """Make a channels-redis layer's blocking receive end before its sockets time out.

    It changes this layer object, which the process's other users of the alias
    share: their receives, if any, then block no longer than that either.
    """
    blocking = getattr(layer, "brpop_timeout", None)
    if not isinstance(blocking, int | float) or not hasattr(layer, "create_pool"):
        return  # not channels-redis's RedisChannelLayer
    try:
        timeouts = [t for t in map(_socket_timeout, _pools(layer)) if t is not None]
    except Exception:
        return  # a host it cannot make a pool for: its first receive fails, as an outage
    fitted = min(timeouts, default=math.inf) * BLOCKING_SHARE
    if fitted < blocking:
        layer.brpop_timeout = int(fitted) if fitted >= WHOLE_SECONDS_FROM else fitted


def _pools(layer: Any) -> list[Any]:
    # The pools the layer would make: redis-py reads socket_timeout from the
    # host's dict or its URL's query. Making a pool opens no connection, not
    # even to the sentinels of a Sentinel host.
    return [layer.create_pool(index) for index in range(len(layer.hosts))]


def _socket_timeout(pool: Any) -> float | None:
    try:
        # A connection object, never connected: it holds redis-py's own default.
        timeout = pool.connection_class(**pool.connection_kwargs).socket_timeout
    except Exception:
        return None  # a pool of another kind: leave the layer as configured
    return float(timeout) if isinstance(timeout, int | float) and timeout > 0 else None


# Layers known to reach other processes, by their BACKEND setting.
SHARED_BACKENDS = frozenset(
    {"channels_redis.core.RedisChannelLayer", "channels_redis.pubsub.RedisPubSubChannelLayer"}
)


def has_shared_layer() -> bool:
    """``shared_layer() is not None``, from the settings alone when they name
    a layer known to be shared: making the layer imports channels-redis and
    redis-py, a hundred milliseconds and more that a fresh process's first
    send need not wait for (the send loop makes it, see ``outbox``)."""
    config = channel_layers.configs.get(conf.LONGPOLL_CHANNEL_LAYER)
    if config is not None and config.get("BACKEND") in SHARED_BACKENDS:
        return True
    return shared_layer() is not None


def shared_layer() -> BaseChannelLayer | None:
    """The channel layer that carries wake-ups between processes, if any.

    ``InMemoryChannelLayer`` reaches no other process and does O(channels +
    groups) work per call, so the hub wakes local polls directly instead.
    """
    layer = get_channel_layer(conf.LONGPOLL_CHANNEL_LAYER)
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None
    return layer
