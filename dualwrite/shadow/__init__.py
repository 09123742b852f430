"""Shadow reads, verification and cutover for dualwrite.

- shadow.normalize: cross-engine normalization (unordered results, JSON key order, UTC datetimes, float
  tolerance, Decimal vs float, trailing spaces) and the row hash verify uses.
- shadow.experiment: a Scientist-style Experiment (compare, clean, ignore, run_if, percentage, context,
  raise_on_mismatches; exceptions compared as results; errors in the experiment's code counted as error).
- shadow.reader: ShadowReader, installed as `dw.reader`: compares a sample of reads against the other
  backend off the request path (bounded pool; skipped when full), A/A noise, mismatch samples in Redis.
- shadow.pacing: the reader's workers wait (bounded) for a moment with no request in flight, so a
  comparison does not take the GIL from a request being served.
- shadow.sqlsum / shadow.checksum / shadow.verify: per-table counts and checksums over key ranges
  (computed inside both databases where every column type has a SQL rendering, else in Python),
  bisection to the differing keys, `fix` through the apply rule; the last result is kept for the gate.
- shadow.gate / shadow.cutover: gate conditions with values, flip / rollback / postponed flip / hooks.
- shadow.cli: `dualwrite verify`, `dualwrite shadow report`, `dualwrite cutover check|flip|rollback|cancel|status`.
"""
