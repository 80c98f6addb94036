"""The real tools and the bd stand-in: found, installed on PATH, or the test skipped (failed in CI)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.scripts import benchkit

REAL_BD = os.environ.get("DISPATCH_REAL_BD") or shutil.which("bd-real") or ""


def require_real_tool(available: bool, reason: str) -> None:
    """Skip a test that needs a real tool (Aider, Ollama, Chromium) on a machine without it; in CI
    (CI=true) fail instead, so a broken install can never pass as a quiet skip."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but {reason}")
    pytest.skip(reason)


def install_fake_bd(bin_dir: Path) -> Path:
    """Put the stand-in on PATH as `bd`, run by this interpreter."""
    return benchkit.write_bd_stand_in(bin_dir)


def init_real_bd(repo: Path) -> None:
    subprocess.run([REAL_BD, "init", "--prefix", "proj", "--quiet", "--skip-hooks", "--skip-agents",
                    "--non-interactive"],
                   cwd=repo, check=True, capture_output=True, text=True)


BACKENDS = ["json", "fake-bd", pytest.param("real-bd", marks=[pytest.mark.real_tool, pytest.mark.skipif(
    not REAL_BD, reason="real bd not built (scripts/install_bd.sh builds it; needs Go)")])]
