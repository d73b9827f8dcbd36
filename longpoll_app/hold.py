"""The hold algorithm: what one poll answers, and when.

Given a session's follow (already checked live and attached to its record),
the poll's cursor and the time it may be held, ``hold`` returns a batch to
answer with, or None when the hold ran out with nothing new. It owns the
decisions of the poll path: when what the hub knows is trusted instead of
reading the store, when a fresh page counts as drained, and what the cursor
acknowledges. It needs no server: tests drive it with a hub and a reader.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from . import queue
from .conf import conf
from .follows import Follow
from .hub import Hub
from .queue import Batch
from .threads import run_in_thread

Ids = tuple[int, int]  # a record's (last_id, acked_id), as a session check read them
Reader = Callable[[Hub, Follow, "int | None", "Ids | None"], Awaitable[Batch]]


class Ended(Exception):
    """The session's key no longer names a live session (ended, or rotated)."""


async def read_store(hub: Hub, follow: Follow, cursor: int | None, ids: Ids | None) -> Batch:
    """Read the store, by the session's key as well as its record: a key that
    was rotated or ended reads nothing, in every process at once. ``ids``: the
    record's ids just read by this key, when they are still the newest."""
    assert follow.pk is not None  # attached before any read
    started = hub.loop.time()
    batch = None if ids is None else queue.empty_batch(cursor, ids)
    if batch is None:
        batch = await run_in_thread(queue.read)(
            follow.pk, follow.session_key, cursor, conf.LONGPOLL_BATCH_SIZE, ids
        )
    if batch is None:
        hub.forget(follow.session_key)
        raise Ended
    hub.follows.saw(follow, batch.last_id, started)
    return batch


async def hold(
    hub: Hub,
    follow: Follow,
    cursor: int | None,
    ids: Ids,
    timeout: float,
    read: Reader = read_store,
) -> Batch | None:
    """The batch a poll with ``cursor`` answers with, or None after ``timeout``
    seconds without one. ``ids`` come from the session check that attached
    ``follow``. Raises ``Ended`` when the session ends meanwhile."""
    loop = hub.loop
    deadline = loop.time() + timeout
    acknowledged = cursor  # what the page says it received
    fresh_ids: Ids | None = ids
    read_again = False  # a wake-up came during the last read: read before waiting
    hub.follows.hold_starts(follow)
    try:
        while True:
            # Before reading the store, so that no wake-up falls in between; again
            # after an outage, when the layer forgot the groups.
            if hub.must_subscribe(follow):
                await hub.subscribe(follow)
            trusted = hub.is_trusted(follow)
            if cursor is None and trusted and follow.knows_nothing_pending():
                # A fresh page, and the process knows nothing is pending: wait as
                # a page with the newest id would. A browser that has never had a
                # message re-polls like this every hold: this keeps it off the store.
                cursor = follow.last_id
            batch = None
            if cursor is None or not trusted or cursor != follow.last_id:
                # The check's ids are good only if wake-ups were arriving before
                # it, and no wake-up has told of a newer message since.
                usable = trusted and fresh_ids is not None and fresh_ids[0] >= follow.last_id
                batch = await read(hub, follow, cursor, fresh_ids if usable else None)
            fresh_ids = None
            if acknowledged is not None:
                # Also on the trusted path: the usual re-poll after a batch reads
                # nothing, yet it is what acknowledges that batch (deleted later,
                # in bulk; the hub ignores cursors beyond the newest id).
                hub.ack(follow, acknowledged)
            if batch is not None:
                if batch.messages or batch.gap:
                    return batch
                if cursor is None:
                    follow.drain(batch.last_id)
                cursor = batch.cursor
                # A wake-up that arrived while the read ran found no poll waiting;
                # its message came after the read's snapshot. Waiting now would
                # leave it for the next hold: read once more instead (once: an id
                # no read can find must not spin).
                read_again = not read_again and follow.last_id > batch.last_id
                if read_again:
                    continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not await hub.wait(follow, remaining):
                return None
            if follow.ended:
                raise Ended
    finally:
        hub.follows.hold_ends(follow)
