"""End-to-end: the service, Redis, PostgreSQL, two collectors, two Prometheus and Alertmanager."""
