"""`dualwrite bench`: every figure as a ratio to a baseline measured in the same run (the machine is
shared and noisy), one report directory (report.md, report.json, one PNG per section).

- runner.py          runs every section into one report; report.py and figures.py write it; goals.py
                     makes a goal line (median and spread of the per-round ratios)
- common.py          the isolated environment (own schemas, databases, namespaces), the bench table,
                     statistics, machine info
- ops.py (1), overhead.py (2), shadow_overhead.py (3), copy_bench.py (4) with copy_worker.py and
  rss_launcher.py, replay_bench.py (5) with replay_procs.py, verify_bench.py (6), fence_bench.py (7): the sections
"""
