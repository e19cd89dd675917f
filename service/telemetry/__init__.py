"""Telemetry: OpenTelemetry providers and exporters, the service's instruments, JSON logs, and the
instrumentation of the SQL engine and the Redis client.
"""
