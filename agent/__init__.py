"""Edgewise device agent: pulls signed model packages over MQTT and runs them with ONNX Runtime.

This package must never import ``torch`` or ``compiler``: it runs on boards without room for them.
"""

__version__ = "0.1.0"
