"""Run one command and print its peak RSS: `python .../rss_launcher.py CMD ARGS...`.

The bench runs each copy method through this small launcher, which reads resource.getrusage(RUSAGE_CHILDREN)
after its only child exits. Launched straight from the bench, a child's ru_maxrss would start at the bench
process's own RSS (Linux carries the pre-exec high-water mark, taken right after fork, over exec); this
launcher is tiny (the standard library only; run as a script, so no package is imported), so the number
is the method's own peak.
Prints a last line `RSS_JSON {"code": ..., "maxrss_kib": ..., "wall_s": ...}` to stderr."""

import json
import resource
import subprocess
import sys
import time

t0 = time.perf_counter()
code = subprocess.call(sys.argv[1:])
wall = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print("RSS_JSON " + json.dumps({"code": code, "maxrss_kib": usage.ru_maxrss, "wall_s": wall}), file=sys.stderr)
sys.exit(code)
