"""Monitoring: component health, realised accuracy, and drift against the training reference."""
