"""kforge's version, a leaf: the store stamps it on every kernel it writes without importing the
package facade (`kforge/__init__.py`, which registers every op). Kept equal to pyproject.toml's."""
from __future__ import annotations

__version__ = "0.1.0"
