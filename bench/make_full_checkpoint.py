"""Write a full-size (446.7 M parameters) random checkpoint in the release's format, for benchmarks and GPU tests.

    python bench/make_full_checkpoint.py /tmp/full     # ImageReward.pt (1.8 GB) + med_config.json

Speed does not depend on the weights' values, and every parameter being random makes a wrong key mapping visible.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.checkpoints import med_config, official_state_dict  # noqa: E402

FULL = {"width": 1024, "depth": 24, "hidden": 768, "layers": 12, "ffn": 3072}


def write_full(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(official_state_dict(**FULL, seed=seed), folder / "ImageReward.pt")
    config = med_config(hidden=768, layers=12, heads=12, ffn=3072)
    (folder / "med_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


if __name__ == "__main__":
    print(write_full(Path(sys.argv[1] if len(sys.argv) > 1 else "full-checkpoint")))
