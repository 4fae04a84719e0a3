"""cald-speech: linear-time students of transformer speech encoders (CALD, GenDistiller)."""

__version__ = "0.1.0"
