"""Write a full-size (446.7 M parameters) random ImageReward model folder, for benchmarks and GPU tests.

    python bench/make_full_checkpoint.py /tmp/full            # ImageReward.pt (1.8 GB), med_config.json, vocab
    imagereward images/ --models-dir /tmp/full --offline      # runs as with the real model; the scores mean nothing

The folder is laid out as a download leaves it (``ImageReward.pt``, ``med_config.json``,
``bert-base-uncased/vocab.txt``, the vocabulary copied from ``tests/fixtures``), so the command line, the library and
the WebUI load it without any network. Speed does not depend on the weights' values, and every parameter being random
makes a wrong key mapping visible. An ``ImageReward.pt`` already in the folder is overwritten only when this script
wrote it (``RANDOM-WEIGHTS.txt`` beside it says so): a real download is never replaced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "tests" / "fixtures" / "bert-base-uncased" / "vocab.txt"
MARKER = "RANDOM-WEIGHTS.txt"

FULL = {"width": 1024, "depth": 24, "hidden": 768, "layers": 12, "ffn": 3072}
FULL_CONFIG = {"hidden": 768, "layers": 12, "heads": 12, "ffn": 3072}


def write_full(
    folder: Path,
    seed: int = 0,
    *,
    vocab: bool = False,
    dims: dict[str, int] | None = None,
    config: dict[str, int] | None = None,
) -> Path:
    """Write ImageReward.pt and med_config.json, with `vocab` the BERT vocabulary too (the command line does: the
    folder is then complete); full size unless `dims`/`config` say otherwise (the tests use a tiny one)."""
    import torch  # here, not at the top: --help must not wait for torch

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.checkpoints import med_config, official_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(
        f"ImageReward.pt here holds random weights (seed {seed}), written by bench/make_full_checkpoint.py: for "
        "benchmarks and tests; its scores mean nothing. Delete this folder when done.\n",
        "utf-8",
    )
    torch.save(official_state_dict(**(dims or FULL), seed=seed), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(med_config(**(config or FULL_CONFIG)), indent=2), "utf-8")
    if vocab:
        (folder / "bert-base-uncased").mkdir(exist_ok=True)
        shutil.copyfile(VOCAB, folder / "bert-base-uncased" / "vocab.txt")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make_full_checkpoint.py",
        description="Write a full-size ImageReward model folder with random weights (1.8 GB; about a minute and "
        "4 GB of memory): ImageReward.pt, med_config.json and bert-base-uncased/vocab.txt. Use it with "
        "--models-dir FOLDER --offline to try or benchmark the scorer without the download; its scores mean nothing.",
    )
    parser.add_argument("folder", help="the model folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        print(f"make_full_checkpoint.py: error: {folder} is a file, not a folder", file=sys.stderr)
        return 2
    if (folder / "ImageReward.pt").exists() and not (folder / MARKER).is_file():
        print(
            f"make_full_checkpoint.py: error: {folder / 'ImageReward.pt'} already exists and was not written by this "
            "script (it may be the real model); it is never overwritten: name another folder",
            file=sys.stderr,
        )
        return 2
    print(write_full(folder, args.seed, vocab=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
