"""Performance benchmarks: `make bench` runs `benchmarks.http` (real processes, real HTTP)."""
