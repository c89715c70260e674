"""One error hierarchy for the whole service."""

from __future__ import annotations

__all__ = ["RecoError", "ConfigError", "InvalidEvent", "BrokerUnavailable", "InvalidUpdate"]


class RecoError(Exception):
    """Base class of every error this service raises on purpose."""


class ConfigError(RecoError, ValueError):
    """A setting is missing or malformed; the message names the setting and the value."""


class InvalidEvent(RecoError, ValueError):
    """An event violates the contract.

    ``reason`` is a short, bounded label (safe as a metric label); ``field`` names the offending
    field when there is one; ``str(exc)`` is the human-readable message.
    """

    def __init__(self, message: str, *, reason: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


class BrokerUnavailable(RecoError, ConnectionError):
    """The Kafka bootstrap servers could not be reached."""


class InvalidUpdate(RecoError, ValueError):
    """A model update is corrupt, truncated or out of order."""
