"""The end-to-end demo (`dualwrite demo`): a whole cutover of the example application under live traffic.

- run.py        the cutover, step by step, while traffic runs
- traffic.py    writers and readers going through the adapter, every phase long
- multi.py      `--multi-source DIR`: one SQLite file per store and a project file
- synth.py      synthetic rows for any table (deterministic, FK- and unique-consistent)
- embedded.py   embedded servers when none is configured and none answers
- ownership.py  the demo writes only where it created and marked its own places
- progress.py   bars or log lines, and the latency quantiles of its summary
- app/          the example application (eight stores), which uses only the public API
"""
