"""Loading checkpoints: safe unpickling, strict key checks, the safetensors conversion, clear errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from imagereward.config import TextConfig
from imagereward.errors import CheckpointError
from imagereward.weights import SAFETENSORS_NAME, build_model, load_state, official_to_ours
from tests.checkpoints import med_config, official_state_dict

TEXT = TextConfig.from_med_config(med_config())


def test_every_official_key_maps_and_unused_ones_are_known() -> None:
    state = official_state_dict()
    unused = {k for k in state if official_to_ours(k) is None}
    assert unused == {
        "blip.vision_proj.weight",
        "blip.vision_proj.bias",
        "blip.text_proj.weight",
        "blip.text_proj.bias",
        "blip.text_encoder.embeddings.position_ids",
    }
    model = build_model(state, TEXT)
    ours = model.state_dict()
    for key, tensor in state.items():
        if key not in unused:
            assert torch.equal(ours[official_to_ours(key)], tensor), key


_B = "blip.text_encoder.encoder.layer.5."
#: Every key rule, written out: release name -> ours (None: not used by the score). Only this table (and the parity
#: goldens) tell which of the same-shaped LayerNorms or projections each release tensor fills.
KEY_TABLE = [
    ("blip.visual_encoder.patch_embed.proj.weight", "vision.patch_embed.weight"),
    ("blip.visual_encoder.patch_embed.proj.bias", "vision.patch_embed.bias"),
    ("blip.visual_encoder.cls_token", "vision.cls_token"),
    ("blip.visual_encoder.pos_embed", "vision.pos_embed"),
    ("blip.visual_encoder.blocks.1.norm1.weight", "vision.blocks.1.norm1.weight"),
    ("blip.visual_encoder.blocks.1.norm2.bias", "vision.blocks.1.norm2.bias"),
    ("blip.visual_encoder.blocks.1.attn.qkv.weight", "vision.blocks.1.attn.qkv.weight"),
    ("blip.visual_encoder.blocks.1.attn.proj.bias", "vision.blocks.1.attn.proj.bias"),
    ("blip.visual_encoder.blocks.1.mlp.fc1.weight", "vision.blocks.1.mlp.fc1.weight"),
    ("blip.visual_encoder.blocks.1.mlp.fc2.bias", "vision.blocks.1.mlp.fc2.bias"),
    ("blip.visual_encoder.norm.weight", "vision.norm.weight"),
    ("blip.text_encoder.embeddings.word_embeddings.weight", "text.word_embeddings.weight"),
    ("blip.text_encoder.embeddings.position_embeddings.weight", "text.position_embeddings.weight"),
    ("blip.text_encoder.embeddings.LayerNorm.weight", "text.embed_norm.weight"),
    ("blip.text_encoder.embeddings.LayerNorm.bias", "text.embed_norm.bias"),
    (_B + "attention.self.query.weight", "text.layers.5.self_attn.query.weight"),
    (_B + "attention.self.key.bias", "text.layers.5.self_attn.key.bias"),
    (_B + "attention.self.value.weight", "text.layers.5.self_attn.value.weight"),
    (_B + "attention.output.dense.weight", "text.layers.5.self_attn.out.weight"),
    (_B + "attention.output.LayerNorm.weight", "text.layers.5.self_attn_norm.weight"),
    (_B + "attention.output.LayerNorm.bias", "text.layers.5.self_attn_norm.bias"),
    (_B + "crossattention.self.query.bias", "text.layers.5.cross_attn.query.bias"),
    (_B + "crossattention.self.key.weight", "text.layers.5.cross_attn.key.weight"),
    (_B + "crossattention.self.value.weight", "text.layers.5.cross_attn.value.weight"),
    (_B + "crossattention.output.dense.bias", "text.layers.5.cross_attn.out.bias"),
    (_B + "crossattention.output.LayerNorm.weight", "text.layers.5.cross_attn_norm.weight"),
    (_B + "crossattention.output.LayerNorm.bias", "text.layers.5.cross_attn_norm.bias"),
    (_B + "intermediate.dense.weight", "text.layers.5.ffn_in.weight"),
    (_B + "output.dense.weight", "text.layers.5.ffn_out.weight"),
    (_B + "output.LayerNorm.weight", "text.layers.5.ffn_norm.weight"),
    (_B + "output.LayerNorm.bias", "text.layers.5.ffn_norm.bias"),
    ("mlp.layers.0.weight", "head.layers.0.weight"),
    ("mlp.layers.2.bias", "head.layers.1.bias"),
    ("mlp.layers.4.weight", "head.layers.2.weight"),
    ("mlp.layers.6.weight", "head.layers.3.weight"),
    ("mlp.layers.7.bias", "head.layers.4.bias"),
    ("mlp.layers.1.weight", None),  # Dropout positions hold nothing
    ("mlp.layers.5.bias", None),
    ("blip.vision_proj.weight", None),
    ("blip.text_proj.bias", None),
    ("blip.text_encoder.embeddings.position_ids", None),
    ("blip.text_encoder.encoder.layer.5.attention.self.queries.weight", None),  # a near miss matches no rule
    ("blip.visual_encoder.blocks.1.norm3.weight", None),
]


@pytest.mark.parametrize(("release", "ours"), KEY_TABLE, ids=[k for k, _ in KEY_TABLE])
def test_each_key_rule_maps_to_its_own_target(release: str, ours: str | None) -> None:
    assert official_to_ours(release) == ours


def test_the_key_table_names_real_parameters() -> None:
    from imagereward.config import ImageRewardConfig
    from imagereward.model import ImageRewardModel

    with torch.device("meta"):
        names = set(ImageRewardModel(ImageRewardConfig()).state_dict())
    assert {ours for _, ours in KEY_TABLE if ours is not None} <= names


def test_full_size_layout_has_the_release_tensor_count() -> None:
    """625 tensors in the release: the full-size model on the meta device must account for all but 5 of them."""
    from imagereward.config import ImageRewardConfig
    from imagereward.model import ImageRewardModel

    with torch.device("meta"):
        model = ImageRewardModel(ImageRewardConfig())
    assert len(model.state_dict()) == 625 - 5
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(446.7e6 - 0.6e6, rel=0.01)


def test_module_prefix_from_data_parallel_is_stripped() -> None:
    state = {f"module.{k}": v for k, v in official_state_dict().items()}
    build_model(state, TEXT)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("blip.visual_encoder.norm.weight"), "missing 1 of"),
        (lambda s: s.__setitem__("blip.visual_encoder.extra.weight", torch.zeros(1)), "unexpected keys: blip.visual"),
        (lambda s: s.__setitem__("mlp.layers.0.weight", torch.zeros(1024, 7)), r"wrong shapes: head.layers.0.weight"),
        (lambda s: s.__setitem__("mlp.layers.0.bias", torch.zeros(1024, dtype=torch.long)), "not floating point"),
        (lambda s: s.pop("blip.visual_encoder.pos_embed"), "not an ImageReward checkpoint"),
    ],
)
def test_wrong_checkpoints_are_refused_with_a_reason(mutate, message: str) -> None:
    state = official_state_dict()
    mutate(state)
    with pytest.raises(CheckpointError, match=message):
        build_model(state, TEXT)


def test_first_load_converts_to_safetensors_and_later_loads_read_it(tmp_path) -> None:
    pt = tmp_path / "ImageReward.pt"
    torch.save(official_state_dict(), pt)
    state, source = load_state(pt)
    assert source == pt and (tmp_path / SAFETENSORS_NAME).exists()
    again, source = load_state(pt)
    assert source == tmp_path / SAFETENSORS_NAME
    assert set(again) == set(state) - {
        "blip.text_encoder.embeddings.position_ids",
        "blip.vision_proj.weight",
        "blip.vision_proj.bias",
        "blip.text_proj.weight",
        "blip.text_proj.bias",
    }
    assert all(torch.equal(again[k], state[k]) for k in again)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_changed_source_is_converted_again(tmp_path) -> None:
    pt = tmp_path / "ImageReward.pt"
    torch.save(official_state_dict(seed=1), pt)
    load_state(pt)
    torch.save(official_state_dict(seed=2), pt)
    os.utime(pt, ns=(1, 1))  # a different mtime, as a replaced file would have
    _, source = load_state(pt)
    assert source == pt
    assert torch.equal(load_state(pt)[0]["mlp.layers.0.weight"], official_state_dict(seed=2)["mlp.layers.0.weight"])


def test_read_only_folder_still_loads(tmp_path, monkeypatch) -> None:
    pt = tmp_path / "ImageReward.pt"
    torch.save(official_state_dict(), pt)
    monkeypatch.setattr("tempfile.mkstemp", lambda *a, **k: (_ for _ in ()).throw(PermissionError("read-only")))
    _, source = load_state(pt)
    assert source == pt and not (tmp_path / SAFETENSORS_NAME).exists()


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path) -> None:
    pt = tmp_path / "ImageReward.pt"
    state = official_state_dict()
    state["trap"] = Evil()
    torch.save(state, pt, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_state(pt)


def test_truncated_checkpoint_is_reported(tmp_path) -> None:
    pt = tmp_path / "ImageReward.pt"
    torch.save(official_state_dict(), pt)
    data = pt.read_bytes()
    pt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state(pt)
    assert pt.exists()  # the user's file is left alone


def test_corrupt_safetensors_is_reported(tmp_path) -> None:
    st = tmp_path / SAFETENSORS_NAME
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_state(st)


def test_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_state(tmp_path / "ImageReward.pt")


def test_not_a_state_dict(tmp_path) -> None:
    pt = tmp_path / "ImageReward.pt"
    torch.save([torch.zeros(1)], pt)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state(pt)


def test_med_config_errors(tmp_path) -> None:
    bad = tmp_path / "med_config.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not a readable JSON"):
        TextConfig.from_file(bad)
    bad.write_text('{"hidden_size": 8}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="lacks or has a bad value"):
        TextConfig.from_file(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        TextConfig.from_file(tmp_path / "nope.json")


def test_loading_builds_no_random_weights_first(monkeypatch) -> None:
    """The model is built on the meta device: no initialisation may touch real memory."""
    devices = []
    original = torch.nn.init.kaiming_uniform_

    def spy(*args, **kwargs):
        devices.append((args[0] if args else kwargs["tensor"]).device.type)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", spy)
    build_model(official_state_dict(), TEXT)
    assert devices and set(devices) == {"meta"}


def test_a_replaced_torch_load_is_bypassed(tmp_path, monkeypatch) -> None:
    """AUTOMATIC1111 swaps torch.load for a checker that returns None on files written by current torch."""
    pt = tmp_path / "ImageReward.pt"
    torch.save(official_state_dict(), pt)
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: None)
    state, _ = load_state(pt, convert=False)
    assert "mlp.layers.0.weight" in state


def test_loads_while_the_webui_has_replaced_load_state_dict(model_dir, monkeypatch) -> None:
    """AUTOMATIC1111's LoadStateDictOnMeta swaps nn.Module.load_state_dict process-wide during a checkpoint load,
    for a version without `assign`; a score request arriving then must still load correctly."""
    import torch

    from imagereward.scorer import ImageRewardScorer

    reference = ImageRewardScorer.load(model_dir, device="cpu", offline=True, progress=False)

    def webui_replacement(self, state_dict, strict=True):  # no `assign`
        raise AssertionError("load_state_dict must not be called")

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", webui_replacement)
    scorer = ImageRewardScorer.load(model_dir, device="cpu", offline=True, progress=False)
    for (name, a), (_, b) in zip(reference.model.state_dict().items(), scorer.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
