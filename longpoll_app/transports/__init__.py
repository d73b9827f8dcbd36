"""How wake-ups from other processes reach a hub: one module per transport,
behind ``base.Transport``, and the choice among them (``LONGPOLL_TRANSPORT``).

* ``layer``: a shared channel layer (Redis): a group per followed session.
* ``notify``: PostgreSQL alone: one ``LISTEN`` connection per hub, a
  ``NOTIFY`` per send.
* ``watcher``: neither: one indexed look at the queue per interval.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

from channels.layers import BaseChannelLayer
from django.db import DEFAULT_DB_ALIAS, connections

from ..conf import conf
from ..follows import Follows
from .base import Transport
from .layer import LayerTransport
from .notify import NotifyTransport
from .watcher import StoreWatcher

log = logging.getLogger("longpoll_app")

LAYER, POSTGRES, WATCHER = "layer", "postgres", "watcher"


def chosen(has_shared_layer: bool) -> str:
    """The transport this process's hubs use, and so its sends tell: ``layer``,
    ``postgres`` or ``watcher``. "auto" takes the shared layer if there is one,
    else PostgreSQL if the database is PostgreSQL. A choice that cannot work
    (the system checks report it) falls back to the watcher, which always works."""
    wanted = conf.LONGPOLL_TRANSPORT
    on_postgres = can_listen()
    if wanted not in (LAYER, POSTGRES, WATCHER):  # "auto", or a value E120 refuses
        return LAYER if has_shared_layer else POSTGRES if on_postgres else WATCHER
    if (wanted == LAYER and not has_shared_layer) or (wanted == POSTGRES and not on_postgres):
        return WATCHER
    return wanted


def can_listen() -> bool:
    """Whether hubs can LISTEN: the default database is PostgreSQL, and psycopg 3
    (the ``[postgres]`` extra) is installed; Django also runs on psycopg2."""
    return connections[DEFAULT_DB_ALIAS].vendor == "postgresql" and _has_psycopg()


@functools.cache
def _has_psycopg() -> bool:
    return importlib.util.find_spec("psycopg") is not None


def make_transport(follows: Follows, layer: BaseChannelLayer | None) -> Transport:
    """The transport of a new hub; ``layer``: the shared channel layer, if any."""
    kind = chosen(layer is not None)
    if conf.LONGPOLL_TRANSPORT in (LAYER, POSTGRES) and kind != conf.LONGPOLL_TRANSPORT:
        log.error(
            "longpoll: LONGPOLL_TRANSPORT %r cannot work here (see the system checks); "
            "wake-ups from other processes arrive through the store watcher",
            conf.LONGPOLL_TRANSPORT,
        )
    if kind == LAYER:
        assert layer is not None  # chosen() said so
        return LayerTransport(follows, layer)
    if kind == POSTGRES:
        return NotifyTransport(follows)
    return StoreWatcher(follows)
