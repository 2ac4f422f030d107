"""logikids-sync: a zero-knowledge sync store for the Logikids learning app."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
QUERIES_DIR = PROJECT_ROOT / "queries"
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
