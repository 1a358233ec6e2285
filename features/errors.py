"""The error tree of bypass.

It lives in ``features`` because ``features`` is the lowest layer: every other
package may import it, and it imports nothing but the standard library.

    BypassError                 every error bypass raises on purpose
    ├── ConfigError             a setting or a file given by the user is wrong
    ├── SpecError               the feature spec is invalid (feature, problem)
    ├── LateEventError          an event is older than the allowed lateness
    ├── EventError              an event lacks what the feature engine needs
    └── StateError              a state snapshot cannot be restored

Other packages add their own subclasses (``rules.RuleSetError``,
``sinks.SinkError`` ...).  Every error carries structured fields and a message
that says what went wrong, where, and what to do.
"""

from __future__ import annotations

from typing import Any


class BypassError(Exception):
    """Root of every error bypass raises on purpose.

    ``fields`` holds the structured details (``rule_id``, ``position``,
    ``retry_after`` ...) so callers can act on them without parsing text.
    """

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = fields


class ConfigError(BypassError):
    """A setting, a command-line value or a user-supplied file is wrong."""


class SpecError(ConfigError):
    """The feature spec is invalid. ``fields['feature']`` names the feature."""


class LateEventError(BypassError):
    """An event is older than the entity's newest event by more than the allowed lateness."""


class EventError(BypassError):
    """An event lacks what the feature engine needs (an integer ``ts``, a string ``event_id``)."""


class StateError(BypassError):
    """A state snapshot cannot be restored (corrupt or of an unknown format)."""
