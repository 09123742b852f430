"""Shadow reads: serve each read from the phase's read backend, compare a sample against the other one.

    from dualwrite.shadow import ShadowReader
    ShadowReader(percentage=5).install(dw)          # dw.read(...) now goes through it

- experiment.py  a Scientist-style Experiment (compare, clean, ignore, run_if, percentage, context,
                 raise_on_mismatches; exceptions compared as results; errors in the experiment's code
                 counted as "error"); mismatches name the differing rows (ORM objects by class and key)
- reader.py      ShadowReader, installed as `dw.reader`: compares off the request path (bounded pool;
                 skipped when full), re-reads a mismatch before it counts, A/A noise
- candidate.py   the candidate read on the other backend (its own engine, a statement timeout)
- comparator.py  comparator="process": the comparisons in a process of their own, fed a record per read
- records.py     the counts and mismatch samples in Redis, for the gate and the CLI of any process
- pacing.py      the workers wait (bounded) for a moment with no request in flight before each step

Normalization (JSON key order, UTC datetimes, float tolerance, Decimal vs float, ORM objects by their
mapped values) is dualwrite.normalize, shared with verify.
"""

from dualwrite.shadow.experiment import Experiment, MismatchError, Observation, Result
from dualwrite.shadow.reader import ShadowReader

__all__ = ["Experiment", "MismatchError", "Observation", "Result", "ShadowReader"]
