"""Feature spec versions on the compacted ``bypass.features`` topic: publish, read, pick.

The records are those of the rules topic (:mod:`streams.core.rulestore`): a publication per
version (key = the version, value = ``{"version", "text" (the spec YAML), "published_ms",
"source", "publisher"}``) and activations (``bypass features activate VERSION``, key
``\\x00activate:<uuid>``).  The active spec is the one the last record designates that
loads, like a rule set; with nothing published, BYPASS_FEATURES_SPEC (the file) is it.

A spec version is its ``version:`` key, or ``sha-`` and 12 hex digits of its text when it
has none.  Versions are immutable.  A spec is published only when

- it loads (every problem is a SpecError naming the feature),
- it has the entity kinds of the active spec (a new entity kind needs its own topics and
  tables: change BYPASS_FEATURES_SPEC and restart the workers), and
- the active rule set loads against it (a spec that drops or retypes a feature a rule
  reads would be refused by every worker).

What a running worker does with a new version (warm start) is :mod:`streams.core.warmup`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import features
from features.errors import BypassError
from streams.core import kafka
from streams.core.assembly import load_for_spec, load_spec
from streams.core.rulestore import (
    Activation,
    PublishError,
    RuleSetRecord,
    designated,
    find_published,
    read_entries,
    require_published,
    write_activation,
    write_publication,
)
from streams.settings import Settings

__all__ = [
    "ActiveSpec",
    "SpecPublishError",
    "activate_spec",
    "active_spec",
    "changed_features",
    "check_compatible",
    "file_spec",
    "load_published",
    "publish_spec",
    "spec_version",
]


class SpecPublishError(BypassError):
    """A feature spec could not be published or activated (``fields['version']``)."""


@dataclass(frozen=True, slots=True)
class ActiveSpec:
    """The feature spec in force: its version, the spec, and its publication (None: the
    BYPASS_FEATURES_SPEC file, nothing published)."""

    version: str
    spec: features.FeatureSpec
    record: RuleSetRecord | None


def spec_version(spec: features.FeatureSpec, text: str) -> str:
    """The version a spec is published as: its ``version:``, else a digest of its text."""
    if spec.version:
        return spec.version
    return "sha-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def file_spec(settings: Settings) -> ActiveSpec:
    """BYPASS_FEATURES_SPEC as the active spec (nothing published)."""
    path = settings.features_spec
    spec = load_spec(settings)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:  # pragma: no cover - load_spec read it a moment ago
        text = ""
    return ActiveSpec(spec_version(spec, text), spec, None)


def load_published(text: str, settings: Settings) -> features.FeatureSpec:
    """A published spec's text -> the spec; its model files (``models:``) are read relative
    to BYPASS_FEATURES_SPEC's folder, where each worker has the deployed spec."""
    return features.load_spec(text, base=settings.features_spec.parent)


def _load(record: RuleSetRecord, settings: Settings) -> features.FeatureSpec:
    return load_published(record.text, settings)


def active_spec(settings: Settings, *, timeout_s: float = 15.0) -> ActiveSpec:
    """The spec in force: the latest designated publication on BYPASS_FEATURES_TOPIC that
    loads, else the BYPASS_FEATURES_SPEC file."""
    entries = read_entries(settings, timeout_s=timeout_s, topic=settings.features_topic)
    for record in reversed(designated(entries)):
        try:
            return ActiveSpec(record.version, _load(record, settings), record)
        except BypassError:
            continue
    return file_spec(settings)


def changed_features(old: features.FeatureSpec, new: features.FeatureSpec) -> dict[str, tuple[str, ...]]:
    """Per entity kind: the features of ``new`` whose state ``old`` does not hold (new, or
    with a changed parameter): the ones a warm start rebuilds."""
    out: dict[str, tuple[str, ...]] = {}
    for entity in new.entities:
        have = {f.state_key for f in old.features_of(entity)}
        changed = tuple(f.name for f in new.features_of(entity) if f.state_key not in have)
        if changed:
            out[entity] = changed
    return out


def check_compatible(
    settings: Settings, current: features.FeatureSpec, new: features.FeatureSpec, version: str
) -> None:
    """Raise SpecPublishError when ``new`` cannot replace ``current`` in running workers, or
    rules.RuleSetError when the active rule set does not load against it."""
    if set(new.entities) != set(current.entities) or any(
        new.entities[e] != current.entities[e] for e in current.entities
    ):
        raise SpecPublishError(
            f"feature spec {version!r} has entity kinds {dict(new.entities)}, the active spec "
            f"{dict(current.entities)}: adding, removing or re-keying an entity kind needs its own "
            "topics and tables - change BYPASS_FEATURES_SPEC and restart the workers",
            version=version,
        )
    rule_entries = read_entries(settings)
    chain = designated(rule_entries)
    if chain:
        active = chain[-1]
        load_for_spec(active.text, new, source=f"active rule set {active.version}")


def publish_spec(settings: Settings, text: str, *, source: str | None = None) -> tuple[RuleSetRecord, bool]:
    """Validate ``text`` as a feature spec and publish it to BYPASS_FEATURES_TOPIC.

    Returns (record, published): False when that version is already there with this text.
    Raises SpecError (invalid spec), SpecPublishError (other entity kinds, a version taken by
    another text, the broker not confirming) or rules.RuleSetError (the active rule set does
    not load against it).  Nothing is published on any error.
    """
    spec = load_published(text, settings)
    version = spec_version(spec, text)
    topic = settings.features_topic
    kafka.ensure_topics(settings, [topic], partitions=1, compacted=True)
    current = active_spec(settings)
    check_compatible(settings, current.spec, spec, version)
    entries = read_entries(settings, topic=topic)
    existing = find_published(entries, version, text, "feature spec", SpecPublishError)
    if existing is not None:
        return existing, False
    try:
        return write_publication(settings, topic, version, text, source, "feature spec"), True
    except PublishError as exc:
        raise SpecPublishError(exc.message, version=version) from None


def activate_spec(settings: Settings, version: str) -> tuple[RuleSetRecord, Activation | None]:
    """Make the published spec ``version`` active again (rollback, roll-forward); the same
    checks as a publish.  Returns (its publication, the activation written: None when it is
    active already)."""
    topic = settings.features_topic
    entries = read_entries(settings, topic=topic)
    record = require_published(
        entries, version, topic, "feature spec", "bypass features publish SPEC.yaml", SpecPublishError
    )
    current = active_spec(settings)
    if current.version == version:
        return record, None
    check_compatible(settings, current.spec, _load(record, settings), version)
    try:
        return record, write_activation(settings, topic, version)
    except PublishError as exc:
        raise SpecPublishError(exc.message, version=version) from None
