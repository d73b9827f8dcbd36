"""``manage.py longpoll_stats``: held polls per server process, message totals, latency."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from longpoll_app.stats import collect


class Command(BaseCommand):
    help = (
        "Show the polls held in each server process (as of its last report), the message "
        "totals, and send-to-answer latency percentiles."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the stats view's JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        data = collect()
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
            return
        write = self.stdout.write
        write(f"Held polls: {data['held_polls']} (reports every {data['report_interval']:g} s)")
        for process in data["processes"]:
            write(
                f"  {process['process']}: {process['held_polls']} held, "
                f"{process['sessions']} session(s) followed, reported {process['reported_at']}"
            )
        if not data["processes"]:
            write("  no server process has reported recently")
        write(f"Session records: {data['sessions']}")
        counts = data["messages"]
        write(
            "Messages: "
            + ", ".join(
                f"{counts[name]} {name}"
                for name in ("sent", "delivered", "pending", "expired", "dropped", "discarded")
            )
        )
        latency = data["latency_ms"]
        if latency["count"]:
            write(
                f"Send-to-answer latency over {latency['count']} message(s): "
                f"p50 {latency['p50']:g} ms, p90 {latency['p90']:g} ms, "
                f"p99 {latency['p99']:g} ms, max {latency['max']:g} ms"
            )
        else:
            write("Send-to-answer latency: no message answered since the servers started")
