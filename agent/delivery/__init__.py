"""Packages from announcement to serving model: admission, download, probe, store, switch,
probation and rollback."""
