"""Windowed per-entity CEP state: pure, deterministic, no I/O."""

from features.errors import BypassError, ConfigError, LateEventError, SpecError

__all__ = ["BypassError", "ConfigError", "LateEventError", "SpecError"]
