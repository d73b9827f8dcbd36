"""``manage.py longpoll_purge``: remove expired and leftover rows, for cron."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from longpoll_app.retention import purge_all


class Command(BaseCommand):
    help = (
        "Delete messages older than LONGPOLL_RETENTION, acknowledged messages left behind, "
        "client message ids older than LONGPOLL_DEDUP_WINDOW, records of sessions that ended "
        "or expired, and reports of stopped server processes; in batches, each through an index."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Rows deleted per statement at most (default 1000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch: int = options["batch_size"]
        if batch < 1:
            raise CommandError("--batch-size must be at least 1.")
        done = purge_all(batch)
        self.stdout.write(
            f"Removed {done.expired} expired message(s), {done.acknowledged} acknowledged "
            f"message(s) left behind, {done.client_ids} client message id(s), "
            f"{done.sessions} stale session record(s) and {done.reports} stale process "
            "report(s)."
        )
