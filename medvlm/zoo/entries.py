"""The zoo's entries: one JSON config per model in `zoo/configs/`, validated, and readable without torch.

Kept apart from the factory so `medvlm models` (and anything else that only lists the zoo)
starts in a fraction of a second instead of importing torch and open_clip.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import ValidationError

from medvlm.errors import ModelError
from medvlm.zoo.schema import ZooEntry

CONFIG_DIR = Path(__file__).parent / "configs"


@lru_cache(maxsize=None)
def zoo_entries() -> dict[str, ZooEntry]:
    """Every zoo entry by name, read from `configs/*.json` and validated against `ZooEntry`."""
    return {p.stem: _entry(p) for p in sorted(CONFIG_DIR.glob("*.json"))}


def _entry(path: Path) -> ZooEntry:
    try:
        return ZooEntry.model_validate_json(path.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "entry"
        raise ModelError(f"zoo entry {path} is malformed at '{where}': {first['msg']}; fix the file "
                         f"(medvlm.zoo.schema.ZooEntry lists every field)") from None


def list_models() -> list[str]:
    return list(zoo_entries())
