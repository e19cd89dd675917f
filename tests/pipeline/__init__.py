"""Tests of the telemetry pipeline pieces (collector build and configs) against real binaries."""
