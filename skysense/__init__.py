"""SkySense: multi-modal remote-sensing foundation model."""

from typing import Any

__version__ = "0.1.0"

# top-level name -> the module that defines it (imported on first use: ``import skysense`` stays light)
_LAZY = {
    "load_pretrained": "skysense.pretrained",
    "save_pretrained": "skysense.checkpoint",
    "export_run": "skysense.export",
}


def __getattr__(name: str) -> Any:
    """Lazy top-level API: ``skysense.load_pretrained`` / ``save_pretrained`` / ``export_run`` import
    torch on use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'skysense' has no attribute {name!r}")
