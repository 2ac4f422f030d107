"""Where the tests find the checkout they run from (commands run with it as cwd)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
