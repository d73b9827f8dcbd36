"""Signals the app sends."""

from django.dispatch import Signal

# Sent for every message a page sends, after its handler (if any) ran, with the
# keyword arguments session_key, user, type and data.
message_received = Signal()
