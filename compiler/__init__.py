"""Edgewise compiler: turns a fine-tuned model into a signed int8 package and ships it."""

from agent import __version__

__all__ = ["__version__"]
