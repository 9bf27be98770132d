"""SkySense: multi-modal remote-sensing foundation model."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Lazy top-level API: ``skysense.load_pretrained`` / ``skysense.save_pretrained`` import torch on use."""
    if name in ("load_pretrained", "save_pretrained"):
        from skysense import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'skysense' has no attribute {name!r}")
