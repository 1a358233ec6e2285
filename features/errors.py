"""The error tree of bypass: its root, and the whole tree drawn in one place.

The root lives in ``features`` because ``features`` is the lowest layer: every other
package may import it, and it imports nothing but the standard library.  The classes of
this module are defined here; each other class lives with the code that raises it
(module in brackets).

    BypassError                     every error bypass raises on purpose
    ├── ConfigError                 a setting or a file given by the user is wrong
    │   ├── SpecError               the feature spec is invalid (feature, problem)
    │   ├── DurationError           a duration is not in the duration grammar (text, reason)
    │   ├── TimeFormatError         an instant is not in the time grammar (text, reason)
    │   ├── ModelError              a model file is invalid or unreadable (model, path)
    │   └── LabelFileError          a label file has a bad row (file, line; streams.cli.labels)
    ├── LateEventError              an event is older than the allowed lateness
    ├── EventError                  an event lacks what the feature engine needs
    ├── StateError                  a state snapshot cannot be restored
    ├── RuleSetError                a rule set was rejected at load (rules._model; problems)
    ├── ExpressionError             one rule expression was rejected (rules._expr)
    ├── RuleRuntimeError            a rule failed on one event, reported per hit (rules._expr)
    ├── EvaluationError             an event cannot be evaluated at all (rules._model)
    ├── SinkError                   a sink could not write (sinks.base)
    │   ├── SinkBackpressureError   the target is down or slow: retry after ``retry_after``
    │   │   └── ListUnavailableError  Redis cannot answer in_list look-ups (sinks.redis_lists)
    │   └── RecordError             one record does not fit the schema: dead-letter it
    ├── InvalidEventError           a raw event does not decode or validate (streams.core.envelope)
    ├── KafkaSetupError             topics cannot be created or checked (streams.core.kafka)
    ├── PublishError                a rule set could not be published (streams.core.rulestore)
    ├── SpecPublishError            a feature spec could not be published (streams.core.featurestore)
    ├── ClickHouseUnavailableError  ClickHouse unreachable or refusing (streams.core.outputs)
    ├── RedisUnavailableError       Redis unreachable for a CLI verb (streams.cli.lists)
    ├── ReplayError                 a replay cannot start or go on (streams.replay.options)
    ├── DeliveryError               the producer SDK could not deliver (streams.producer)
    ├── StackError                  a local stack part cannot start (streams.local.stack)
    └── DemoError                   the demo cannot go on (streams.local.demo)

Every error carries structured fields (``fields``: ``rule_id``, ``position``,
``retry_after`` ...) and a message that says what went wrong, where, and what to do.  The
``bypass`` command prints ``error: <message>`` for any of them and exits 1.
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


class DurationError(ConfigError):
    """A text is not a duration of the one duration grammar (``features._time``).

    ``fields['text']`` is the value given, ``fields['reason']`` what is wrong with it
    (the message ends with examples of the grammar). Callers that know the context
    (a feature, a rule, a command-line option) re-raise it in their own terms.
    """


class TimeFormatError(ConfigError):
    """A text is not an instant of the time grammar (``features._time``): ISO 8601 or
    epoch milliseconds. Same fields as ``DurationError``."""


class ModelError(ConfigError):
    """A model file (``features._model``) is unreadable or not a valid tree ensemble.
    ``fields['model']`` names the model when known, ``fields['path']`` the file."""


class LateEventError(BypassError):
    """An event is older than the entity's newest event by more than the allowed lateness."""


class EventError(BypassError):
    """An event lacks what the feature engine needs (an integer ``ts``, a string ``event_id``)."""


class StateError(BypassError):
    """A state snapshot cannot be restored (corrupt or of an unknown format)."""
