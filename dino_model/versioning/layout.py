"""Where a data version lives in a repository.

The lowest layer of versioning: repo.py (opening DVC) and switch.py (moving data/ between versions)
both build on it, so neither has to import the other for these names.
"""

from __future__ import annotations

DATA_DIR = "data"  # the tracked directory, relative to the repository root
DVC_FILE = "data.dvc"  # its .dvc file: outs[0] is the data version
