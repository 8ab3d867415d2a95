"""Checks on files named by settings, used by the Kafka and Redis client options."""

from __future__ import annotations

from pathlib import Path

from racer_online.errors import ConfigError


def readable_file(path: Path | None, name: str) -> str | None:
    if path is None:
        return None
    if not path.exists():
        raise ConfigError(f"{name}: {path} not found")
    if not path.is_file():
        raise ConfigError(f"{name}: {path} is not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    return str(path)


def why(exc: Exception) -> str:
    """The library's reason, on one line (OpenSSL's reasons name no secret)."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return " ".join(str(reason).split())
