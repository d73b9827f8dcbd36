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

from django.db import DEFAULT_DB_ALIAS, connections

from ..conf import conf

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
