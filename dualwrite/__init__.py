"""dualwrite: zero-downtime SQLite -> PostgreSQL cutover (core package).

Imports run one way: `backfill` and `shadow` import `dualwrite`; `dualwrite` imports neither.
"""

__version__ = "0.1.0"
