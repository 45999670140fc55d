"""Rollouts to a fleet in waves: the plan (pure), its state (SQLite or PostgreSQL) and the
controller that drives it inside `edgewise serve`."""
