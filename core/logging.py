"""Structured logging: one logger namespace (``fedcrm.*``), text or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from fedcrm.settings import get_settings

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        return json.dumps(payload, default=str)


class KeyValueFormatter(logging.Formatter):
    """Readable text with ``key=value`` extras appended."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))
        return base


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``fedcrm`` namespace, configured on first use."""
    _configure_once()
    return logging.getLogger(name if name.startswith("fedcrm") else f"fedcrm.{name}")


_configured = False


def _configure_once() -> None:
    global _configured
    if _configured:
        return
    settings = get_settings()
    root = logging.getLogger("fedcrm")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            JsonFormatter() if settings.log_json else KeyValueFormatter("%(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    root.propagate = True
    _configured = True
