"""Where frames and sensor windows come from: one module per kind of source."""
