"""faust's worker, with the project's logging: every line it writes is a log record in
``FEDSCREEN_LOG_FORMAT`` (JSON by default), none plain text or a terminal escape."""

from __future__ import annotations

import logging
from typing import Any

import faust

from services.kernel.logs import logging_config


class Worker(faust.Worker):
    """``faust.Worker`` with ``logging_config`` instead of mode's colour handler, stdout
    and stderr redirected into the log (anything printed becomes a record), and no
    progress spinner (it writes cursor escapes to stdout, and is the only thing that
    sets the root logger to DEBUG)."""

    def __init__(self, app: faust.App, log_level: str = "INFO", **kwargs: Any) -> None:
        super().__init__(
            app,
            loglevel=log_level.lower(),
            logging_config=logging_config(log_level),
            quiet=True,
            redirect_stdouts=True,
            redirect_stdouts_level=logging.WARNING,
            **kwargs,
        )
        self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
