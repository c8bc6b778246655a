"""What a run is identified by (docs/architecture.md#5-settings-hash-and-fold-identity): the settings hash and the
fold identity. Torch-free: the launchers hash their calls with the same function in job processes.
"""
from __future__ import annotations

import hashlib
import json
from os import PathLike

from daamflow.config import settings_json


def settings_hash(settings: dict) -> str:
    """sha256 of the canonical JSON (``config.settings_json``), 16 hex digits; paths among the values as strings."""
    plain = {k: str(v) if isinstance(v, PathLike) else v for k, v in settings.items()}
    return hashlib.sha256(settings_json(plain).encode()).hexdigest()[:16]


def fold_identity(settings: dict, inputs: dict[str, str]) -> str:
    """The settings hash and the digests of the fold's input files (``{name: sha256}``), hashed together."""
    text = json.dumps({"settings": settings_hash(settings), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
