"""The application: Faust app, topics, envelope, agents, replay, CLI, settings, SDK, local stack."""

from streams.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
