"""Where the real data lives: ``$SKYSENSE_DATA``, else ``shared/data`` beside the repository.

The data is read in place, never copied into the project.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """The data folder, read from the environment at call time."""
    env = os.environ.get("SKYSENSE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
