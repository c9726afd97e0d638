"""Hostile and broken checkpoints: refused with a reason, never executed, never converted, never a traceback; a full
disk or a read-only folder never stops a load."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imagereward import weights
from imagereward.config import TextConfig
from imagereward.errors import CheckpointError
from imagereward.scorer import ImageRewardScorer
from imagereward.weights import SAFETENSORS_NAME, infer_config, load_state, read_safetensors
from tests.checkpoints import VOCAB_DIR, med_config, official_state_dict, write_model_dir
from tests.faults.craft import small_tmpfs

TEXT = TextConfig.from_med_config(med_config())
PROMPT = "a red bicycle leaning on a wall"


def _pt(folder: Path, state: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ImageReward.pt"
    torch.save(state if state is not None else official_state_dict(), path)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------------- code in the pickle


class _Runs:
    """Pickles to a call of `func(*args)` when loaded."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _payloads(marker: Path) -> dict[str, object]:
    shell = f"touch {marker}"
    return {
        "os.system": _Runs(os.system, shell),
        "builtins.exec": _Runs(exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": _Runs(subprocess.call, ["touch", str(marker)]),
        "builtins.__import__": _Runs(__import__, "antigravity"),
        "builtins.eval": _Runs(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()"),
    }


@pytest.mark.parametrize(
    "variant", ["os.system", "builtins.exec", "subprocess.call", "builtins.__import__", "builtins.eval"]
)
@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
def test_code_in_a_pickle_never_runs(tmp_path: Path, variant: str, container: str) -> None:
    marker = tmp_path / "ran"
    state = official_state_dict()
    state["trap"] = _payloads(marker)[variant]
    path = tmp_path / "ImageReward.pt"
    if container == "torch.save":
        torch.save(state, path, pickle_protocol=2)
    else:
        with path.open("wb") as fh:
            pickle.dump(state, fh, protocol=2)
    with pytest.raises(CheckpointError, match=r"refused for safety|could not be read"):
        load_state(path)
    assert not marker.exists() and "antigravity" not in sys.modules
    assert not (tmp_path / SAFETENSORS_NAME).exists()


# ------------------------------------------------------------------------------------------- broken files


def test_an_empty_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    """Issue 9.4: a bare EOFError has no message; reading its first line raised IndexError."""
    path = tmp_path / "ImageReward.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        load_state(path)
    assert path.exists() and path.read_bytes() == b""


@pytest.mark.parametrize("cut", [1, 100, 0.5, -22])
def test_truncated_and_random_checkpoints_are_clear_errors(tmp_path: Path, cut: float) -> None:
    path = _pt(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)] if isinstance(cut, float) else data[:cut])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state(path)
    random_bytes = tmp_path / "random" / "ImageReward.pt"
    random_bytes.parent.mkdir()
    random_bytes.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError):
        load_state(random_bytes)


def test_a_huge_block_number_is_refused_before_anything_is_built() -> None:
    """Issue 9.7: one key naming ViT block 9999999 made the model ten million blocks deep (memory without limit)."""
    state = official_state_dict()
    state["blip.visual_encoder.blocks.9999999.norm1.weight"] = torch.ones(64)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        weights.check_state(state, TEXT)
    state = official_state_dict()
    state["blip.visual_encoder.blocks.999.norm1.weight"] = torch.ones(64)
    with pytest.raises(CheckpointError, match="numbered"):
        infer_config(state, TEXT)


def test_more_blocks_than_vit_large_are_refused() -> None:
    state = official_state_dict(depth=25)
    with pytest.raises(CheckpointError, match="at most 24"):
        infer_config(state, TEXT)


def test_a_zero_size_patch_tensor_is_refused() -> None:
    """Issue 9.7: a zero-size patch embedding divided by zero."""
    state = official_state_dict()
    state["blip.visual_encoder.patch_embed.proj.weight"] = torch.zeros(64, 3, 0, 0)
    with pytest.raises(CheckpointError, match="patch embedding"):
        weights.check_state(state, TEXT)


def test_a_med_config_that_disagrees_with_the_weights_is_refused_before_building() -> None:
    huge = TextConfig.from_med_config({**med_config(), "num_hidden_layers": 10_000_000})
    with pytest.raises(CheckpointError, match=r"2 text layers, med_config\.json names 10000000"):
        weights.check_state(official_state_dict(), huge)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.__setitem__("blip.visual_encoder.extra.weight", torch.zeros(1)),
        lambda s: s.pop("blip.text_encoder.encoder.layer.1.output.dense.bias"),
        lambda s: s.__setitem__("mlp.layers.0.weight", torch.zeros(1024, 7)),
    ],
)
def test_a_refused_checkpoint_is_never_converted(tmp_path: Path, mutate) -> None:
    """Issue 9.8: it was converted before it was checked; with the .pt removed, the bad conversion was used."""
    state = official_state_dict()
    mutate(state)
    path = _pt(tmp_path, state)
    with pytest.raises(CheckpointError):
        load_state(path, text_config=TEXT)
    with pytest.raises(CheckpointError):
        load_state(path)  # also without med_config.json at hand
    assert not (tmp_path / SAFETENSORS_NAME).exists() and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- the conversion


def test_a_same_size_replacement_with_the_old_mtime_is_noticed(tmp_path: Path) -> None:
    """Issue 9.9: the freshness check read name, size and mtime only."""
    path = _pt(tmp_path, official_state_dict(seed=1))
    load_state(path)
    old = path.stat()
    replacement = tmp_path / "new" / "ImageReward.pt"  # (torch.save records the file name inside the zip)
    replacement.parent.mkdir()
    torch.save(official_state_dict(seed=2), replacement)
    assert replacement.stat().st_size == old.st_size
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, path)  # as a copy tool that keeps times does it
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    state, source = load_state(path)
    assert source == path
    assert torch.equal(state["mlp.layers.0.weight"], official_state_dict(seed=2)["mlp.layers.0.weight"])


@pytest.mark.skipif(sys.platform == "win32", reason="st_ctime is the creation time on Windows: a rewrite keeps it")
def test_an_in_place_rewrite_with_the_old_mtime_is_noticed(tmp_path: Path) -> None:
    path = _pt(tmp_path, official_state_dict(seed=1))
    load_state(path)
    old = path.stat()
    time.sleep(0.05)  # let the change-time clock tick past the conversion's record
    data = saved_bytes(tmp_path / "other", official_state_dict(seed=3))
    assert len(data) == old.st_size
    with path.open("r+b") as fh:  # same inode, same size
        fh.write(data)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    state, source = load_state(path)
    assert source == path
    assert torch.equal(state["mlp.layers.0.weight"], official_state_dict(seed=3)["mlp.layers.0.weight"])


def saved_bytes(folder: Path, state: dict) -> bytes:
    return _pt(folder, state).read_bytes()


def test_conversion_is_plain_safetensors_with_its_neighbours_mode(tmp_path: Path) -> None:
    """Issue 9.10 (mode 0600); issue 20.3: the file holds the model's tensors and nothing else (no padding
    pseudo-tensors), so every safetensors tool reads it; read back on the CPU, each tensor is 64-byte aligned (issue
    9.11: other AVX-512 rounding otherwise)."""
    from safetensors.torch import load_file

    path = _pt(tmp_path)
    os.chmod(path, 0o644)
    load_state(path)
    converted = tmp_path / SAFETENSORS_NAME
    assert (converted.stat().st_mode & 0o777) == 0o644
    plain = load_file(str(converted))
    original = official_state_dict()
    used = {k for k in original if weights.official_to_ours(k) is not None}
    assert set(plain) == used  # only the model's tensors: nothing added, the unused release keys left out
    assert all(torch.equal(plain[k], original[k]) for k in plain)  # bit for bit
    tensors, metadata = read_safetensors(converted)
    assert metadata["imagereward"] == weights._CACHE_FORMAT
    assert tensors.keys() == plain.keys() and all(t.data_ptr() % 64 == 0 for t in tensors.values())


def _v2_conversion(path: Path, source: Path | None) -> dict[str, torch.Tensor]:
    """A conversion as version 2 wrote it: the model's tensors with uint8 padding pseudo-tensors among them."""
    from safetensors.torch import save_file

    tensors = {k: v for k, v in official_state_dict().items() if weights.official_to_ours(k) is not None}
    padded = {**tensors, "__imagereward_padding_0": torch.zeros(40, dtype=torch.uint8)}
    stamp = weights._file_stamp(source) if source is not None else {}
    save_file(padded, str(path), metadata={"format": "pt", "imagereward": "imagereward-state-dict-v2", **stamp})
    return tensors


def test_an_old_padded_conversion_is_still_read_without_its_padding(tmp_path: Path) -> None:
    converted = tmp_path / SAFETENSORS_NAME
    tensors = _v2_conversion(converted, None)
    state, source = load_state(tmp_path)  # no .pt beside it: the old file is read as it is
    assert source == converted and state.keys() == tensors.keys()
    scorer = ImageRewardScorer.from_files(converted, _med_config(tmp_path), VOCAB_DIR, device="cpu")
    assert len(scorer.score(PROMPT, [torch.zeros(3, 32, 32)])) == 1


def test_an_old_padded_conversion_is_converted_again_once_with_a_message(tmp_path: Path, caplog) -> None:
    from safetensors.torch import load_file

    path = _pt(tmp_path)
    _v2_conversion(tmp_path / SAFETENSORS_NAME, path)
    with caplog.at_level("INFO", logger="imagereward"):
        _, source = load_state(path)
    assert source == path and "converted by an older version" in caplog.text
    assert not any(k.startswith("__") for k in load_file(str(tmp_path / SAFETENSORS_NAME)))
    caplog.clear()
    with caplog.at_level("INFO", logger="imagereward"):
        _, source = load_state(path)
    assert source == tmp_path / SAFETENSORS_NAME and "older version" not in caplog.text


def _med_config(folder: Path) -> Path:
    import json

    path = folder / "med_config.json"
    path.write_text(json.dumps(med_config()), encoding="utf-8")
    return path


def test_an_older_conversion_format_is_rewritten(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = _pt(tmp_path)
    stamp = weights._file_stamp(path)
    tensors = {k: v for k, v in official_state_dict().items() if not weights.IGNORED_KEYS.match(k)}
    save_file(tensors, str(tmp_path / SAFETENSORS_NAME), metadata={"imagereward": "imagereward-state-dict-v1", **stamp})
    _, source = load_state(path)
    assert source == path  # not trusted: converted again
    assert read_safetensors(tmp_path / SAFETENSORS_NAME)[1]["imagereward"] == weights._CACHE_FORMAT


# ------------------------------------------------------------------------------------------- a full disk


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _safetensors_no_space(tensors, filename, metadata=None):
    from safetensors import SafetensorError

    Path(filename).write_bytes(b"\0" * 16)  # the library fails part-way, as on a real full disk
    raise SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )


@pytest.mark.parametrize("fault", [_no_space, _safetensors_no_space], ids=["OSError", "SafetensorError"])
def test_a_full_disk_stand_in_never_stops_loading(tmp_path: Path, model_dir: Path, monkeypatch, fault) -> None:
    """Issue 9.1: safetensors raises SafetensorError, not OSError; every load failed and left a .tmp behind."""
    folder = write_model_dir(tmp_path / "models")
    monkeypatch.setattr(weights, "_write_safetensors", fault)
    for _ in range(2):
        scorer = ImageRewardScorer.load(folder, device="cpu", offline=True, progress=False)
        assert len(scorer.score(PROMPT, [torch.zeros(3, 32, 32)])) == 1
    assert not (folder / SAFETENSORS_NAME).exists() and _leftovers(folder) == []
    assert (folder / "ImageReward.pt").stat().st_size > 0  # the .pt is untouched


def test_a_full_disk_is_found_before_writing(tmp_path: Path, monkeypatch) -> None:
    path = _pt(tmp_path)

    class Usage:
        free = 1000

    monkeypatch.setattr(weights.shutil, "disk_usage", lambda _folder: Usage)
    _, source = load_state(path)
    assert source == path and not (tmp_path / SAFETENSORS_NAME).exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("check_first", [True, False], ids=["free-space check", "kernel ENOSPC"])
def test_a_real_full_disk(tmp_path: Path, monkeypatch, check_first: bool) -> None:
    """On a small tmpfs where the machine allows mounting one: the .pt fits, its conversion does not."""
    source = _pt(tmp_path / "source")
    size = source.stat().st_size
    with small_tmpfs(tmp_path / "disk", size + 256 * 1024) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs is not allowed here (the stand-in tests cover this case)")
        path = disk / "ImageReward.pt"
        path.write_bytes(source.read_bytes())
        if not check_first:  # let the write itself hit the full disk

            class Plenty:
                free = 1 << 40

            monkeypatch.setattr(weights.shutil, "disk_usage", lambda _folder: Plenty)
        state, read = load_state(path)
        assert read == path and "mlp.layers.0.weight" in state
        assert not (disk / SAFETENSORS_NAME).exists() and _leftovers(disk) == []
        assert path.read_bytes() == source.read_bytes()


def test_temporaries_left_by_earlier_failures_are_cleared(tmp_path: Path) -> None:
    path = _pt(tmp_path)
    old, recent = tmp_path / ".ImageReward-old.safetensors.tmp", tmp_path / ".ImageReward-now.safetensors.tmp"
    for leftover in (old, recent):
        leftover.write_bytes(b"")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    load_state(path)
    assert not old.exists() and recent.exists()  # a recent one may be another process's conversion in progress
