"""The benchmark of the real thing (`make bench`): real uvicorn processes, real HTTP.

Read in this order:
- `variants.py`  the server set-ups compared and how each is forced into its state.
- `shape.py`     durations and repetitions (full run, `--quick`).
- `stack.py`     shared servers (Redis, PostgreSQL, Jaeger, the collector) and a fresh server
                 under test per measurement, all started through tests/harness.
- `load.py`      wrk (saturation) and vegeta (fixed offered rates, open model) and their results.
- `runner.py`    the two interleaved phases: saturation, then latency at shares of it.
- `collector.py` the collector's sustained rate with captured OTLP payloads.
- `report.py`    medians with spread, ratios, targets, the Markdown report.
- `machine.py`   the set-up stated in the results (machine, versions, flags).
"""
