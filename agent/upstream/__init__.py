"""What a device sends upstream: results (outbox, spool, uplink) and telemetry."""
