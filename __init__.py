"""hypersr: video super-resolution with a medium-term memory (a two-pass filter)."""

__version__ = "0.1.0"
