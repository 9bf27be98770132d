"""SkySense: multi-modal remote-sensing foundation model."""

__version__ = "0.1.0"
