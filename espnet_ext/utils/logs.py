"""Logging set-up shared by every ``espnet_ext.bin`` entry point (ESPnet's line format)."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"


def setup_logging(level: int | str = logging.INFO) -> None:
    """Log to stderr at ``level`` in ESPnet's format (``asctime (module:line) LEVEL: msg``)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
