"""The scan window: power stopped instances on for Amazon Inspector v2, then return each to its prior state."""

from __future__ import annotations

from .close import CloseOptions, close_window
from .ledger import Ledger
from .open import OpenOptions, open_window
from .run import RunOptions, run_window, window_status

__all__ = [
    "CloseOptions",
    "Ledger",
    "OpenOptions",
    "RunOptions",
    "close_window",
    "open_window",
    "run_window",
    "window_status",
]
