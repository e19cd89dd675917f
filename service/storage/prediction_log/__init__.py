"""The prediction log: every answered prediction is durable first, in the database soon after.

A request hands its rows to `PredictionLog.append` and waits only for the local spool's group
fsync (`service/storage/spool.py`): a fraction of a millisecond under load, shared by every
request that arrived meanwhile. A writer thread then drains the spool into the `predictions`
table, oldest first, many rows per transaction (group commit), with `INSERT ... ON CONFLICT (id)
DO NOTHING`: replaying a record that was already written (after a crash, or by a process that
adopted a dead one's spool) never doubles a row. So a 200 means the row is stored, and every row
reaches the database exactly once, whatever dies when.

While the database is unreachable, predictions go on being answered and the spool grows, up to
`max_bytes`; beyond that `append` raises `PredictionLogFullError` (the API answers 503) instead
of dropping anything. The writer retries with backoff and drains by itself when the database
returns; rows whose outcome bars arrived meanwhile are resolved as they land.

Feedback on a prediction that is still spooled is spooled too and applied right after its row
lands (`UPDATE ... WHERE status = 'pending'`: the first resolution wins). If the row is not in the
database yet (another worker's spool holds it), the feedback is carried forward, up to
FEEDBACK_DEFER_SECONDS.

Record payloads are JSON objects (`kind` "predictions" with `rows`, or "feedback"), each with the
request's span context so the writer's span links back to the requests whose rows it wrote.
A row the database rejects for what it is (not for being unreachable) is set aside in
`<root>/quarantine/` instead of blocking the log, and counted.

Read in this order: `spool.py` (the durable file format and group commit), `records.py` (what a
record holds), `log.py` (`PredictionLog`, what the service calls), `writer.py` (the thread that
drains the spool into SQL).
"""
