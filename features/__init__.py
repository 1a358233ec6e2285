"""Windowed per-entity CEP state: pure, deterministic, no I/O."""

from features._spec import AGGS, Feature, FeatureSpec, load_spec, parse_duration
from features.errors import BypassError, ConfigError, LateEventError, SpecError

__all__ = [
    "AGGS",
    "BypassError",
    "ConfigError",
    "Feature",
    "FeatureSpec",
    "LateEventError",
    "SpecError",
    "load_spec",
    "parse_duration",
]
