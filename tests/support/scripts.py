"""The benches' helpers (scripts/benchkit.py) that some tests share with them: the responsiveness
scenario, the long events history, a private `ollama serve`, the bd stand-in on PATH. They live
with the benches, which never import tests/; scripts/ goes on the path as when a script runs."""
from __future__ import annotations

import sys

from support.repos import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import benchkit  # noqa: E402, F401
