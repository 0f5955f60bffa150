"""The zoo's entries: one JSON config per model in `zoo/configs/`, readable without torch.

Kept apart from the factory so `medvlm models` (and anything else that only lists the zoo)
starts in a fraction of a second instead of importing torch and open_clip.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


@lru_cache(maxsize=None)
def zoo_entries() -> dict[str, dict]:
    """Every zoo entry by name, read from `configs/*.json`."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.json"))}


def list_models() -> list[str]:
    return list(zoo_entries())
