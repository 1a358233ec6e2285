"""Windowed per-entity CEP state: pure, deterministic, no I/O.

    spec = load_spec("examples/features.yaml")        # or FeatureSpec.from_dict(mapping)
    engine = FeatureEngine(spec, cap=10_000, allowed_lateness_ms=3_600_000)
    state = engine.new_state("user")
    result = engine.apply("user", state, event)      # .features, .status, .reason
    blob = engine.dumps(state); state = engine.loads("user", blob)

State size: see ``bench/bench_features.py``; a typical user (about 100 events in 30 days
over the example spec) snapshots to BYTES_PER_USER.
"""

from features._engine import APPLIED, DUPLICATE, LATE_REJECTED, ApplyResult, EntityState, FeatureEngine
from features._spec import AGGS, Feature, FeatureSpec, load_spec, parse_duration
from features.errors import BypassError, ConfigError, EventError, LateEventError, SpecError, StateError

__all__ = [
    "AGGS",
    "APPLIED",
    "DUPLICATE",
    "LATE_REJECTED",
    "ApplyResult",
    "BypassError",
    "ConfigError",
    "EntityState",
    "EventError",
    "Feature",
    "FeatureEngine",
    "FeatureSpec",
    "LateEventError",
    "SpecError",
    "StateError",
    "load_spec",
    "parse_duration",
]
