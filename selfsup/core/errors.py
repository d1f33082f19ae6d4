"""The library's one-line errors that are not about the user's data (see ``selfsup.data.DataError``)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line naming it."""


class CheckpointError(ValueError):
    """A missing, unreadable or mismatched checkpoint; one-line message naming the file or state."""
