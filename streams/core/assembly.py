"""Engine assembly: settings -> feature spec, features/ engine, rule set, list provider, processor.

The live worker, replay and the offline commands build their processing core here, so
they cannot differ in how a setting (state cap, lateness, dedup horizon) reaches the
engine.
"""

from __future__ import annotations

from pathlib import Path

import features
import rules
from features.errors import ConfigError
from sinks.redis_lists import PrefetchingListProvider, provider_from_settings
from streams.core.processor import Processor
from streams.settings import Settings

__all__ = [
    "NO_RULES_VERSION",
    "build_engine",
    "build_processor",
    "empty_ruleset",
    "list_provider",
    "load_for_spec",
    "load_spec",
]

#: The version string of the rule set a worker runs before any version is published.
NO_RULES_VERSION = "none"


def load_spec(settings: Settings) -> features.FeatureSpec:
    """The feature spec named by BYPASS_FEATURES_SPEC (a clear ConfigError when unreadable)."""
    path = Path(settings.features_spec)
    if not path.is_file():
        raise ConfigError(
            f"feature spec {str(path)!r} not found: set BYPASS_FEATURES_SPEC to the feature spec YAML",
            setting="BYPASS_FEATURES_SPEC",
        )
    return features.load_spec(path)


def load_for_spec(text: str, spec: features.FeatureSpec, *, source: str | None = None) -> rules.RuleSet:
    """Load (validate) a rule set against ``spec``; raises ``rules.RuleSetError``."""
    return rules.load_ruleset(text, spec.schema(), source=source, event_types=spec.events)


def build_engine(spec: features.FeatureSpec, settings: Settings) -> features.FeatureEngine:
    """The features/ engine with the settings' cap, lateness and dedup horizon."""
    return features.FeatureEngine(
        spec,
        cap=settings.state_cap,
        allowed_lateness_ms=settings.allowed_lateness_ms,
        dedup_horizon_ms=settings.dedup_horizon_ms,
    )


def empty_ruleset(spec: features.FeatureSpec) -> rules.RuleSet:
    """A rule set with no rules (version ``none``): features are kept, no hits."""
    return rules.build_ruleset({"version": NO_RULES_VERSION, "rules": []}, spec.schema())


def list_provider(settings: Settings) -> PrefetchingListProvider:
    """The ``in_list`` provider: the named lists in Redis, prefetched per batch."""
    return provider_from_settings(settings)


def build_processor(
    settings: Settings,
    spec: features.FeatureSpec,
    ruleset: rules.RuleSet | None = None,
    *,
    run_id: str,
) -> Processor:
    """The one processing core, as the live worker and replay build it."""
    return Processor(
        spec,
        build_engine(spec, settings),
        ruleset if ruleset is not None else empty_ruleset(spec),
        run_id=run_id,
        lists=list_provider(settings),
        decision_sample=settings.decision_sample,
    )
