"""Service logs as one JSON object per line (or plain text for a terminal).

Fields passed with ``extra=`` (``batch_id``, ``decision_id``, ``partner``, ...) become
top-level keys, so a log pipeline can follow one batch or one decision across the
services without parsing messages.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# What every LogRecord carries; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class LogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDSCREEN_LOG_", extra="ignore")

    format: Literal["json", "text"] = Field(
        default="json",
        description="json: one object per line with batch_id/decision_id fields, for a log "
        "pipeline; text: for reading in a terminal.",
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter(kind: str | None = None) -> logging.Formatter:
    kind = kind or LogSettings().format
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)


QUIET_LOGGERS = ("aiokafka",)
"""Held at WARNING: aiokafka builds a DEBUG/INFO record per message and per group event."""


def configure_logging(level: str = "INFO") -> None:
    """Root logging to stderr in the configured format, Python warnings included, and a
    warning for every unknown ``FEDSCREEN_LOG_*`` variable."""
    from services.kernel.config import warn_unknown_settings

    root = logging.getLogger()
    root.setLevel(level.upper())
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    use_formatter_everywhere()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    warn_unknown_settings(LogSettings)


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """The same setup as :func:`configure_logging`, as a ``logging.config.dictConfig``
    dictionary: for frameworks that configure logging themselves (faust's worker)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"fedscreen": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "fedscreen",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"level": "WARNING"} for name in QUIET_LOGGERS},
    }


def use_formatter_everywhere() -> None:
    """Give every root handler the configured formatter, including handlers another
    framework installed first (faust's worker sets up its own)."""
    chosen = formatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(chosen)
