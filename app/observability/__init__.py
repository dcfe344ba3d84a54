"""What Sentinel tells its operators: request metrics counted in process (recorder), flushed
to Redis for totals and history, exported to Prometheus (prometheus)."""
