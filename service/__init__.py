"""logikids-sync: a zero-knowledge sync store for the Logikids learning app."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__version__ = "0.1.0"

# The SQL ships inside the package (service/queries and service/migrations link to the
# repository's top-level folders; the wheel carries the files), so it is found the same
# way in a checkout, an editable install and an installed wheel. The package is installed
# as files, never zipped: aiosql and the migration runner read real paths.
QUERIES_DIR = Path(str(files(__name__) / "queries"))
MIGRATIONS_DIR = Path(str(files(__name__) / "migrations"))
