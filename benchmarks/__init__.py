"""Performance benchmarks: `make bench` runs `benchmarks.httpbench` (real processes, real HTTP)."""
