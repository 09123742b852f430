"""deploy/ holds the sample application (not an installed package): make it importable for these tests,
as the deployment's PYTHONPATH does."""

from __future__ import annotations

import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
if str(DEPLOY) not in sys.path:
    sys.path.insert(0, str(DEPLOY))
