from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imagereward.engine import ScoringOutOfMemoryError
from imagereward.webui.runtime import RuntimeSettings, ScorerRuntime


class FakeScorer:
    """Behaves like ImageRewardScorer for the runtime: a device, .to(), .score(); can run out of GPU memory."""

    def __init__(self, oom_on: str | None = None) -> None:
        self.device = torch.device("cuda")  # pretend: nothing is allocated
        self.moves: list[tuple[str, object]] = []
        self.batch_size = 0
        self.oom_on = oom_on

    def to(self, device, dtype=None):
        self.device = torch.device(device)
        self.moves.append((str(device), dtype))
        return self

    def score(self, prompts, images, clean_prompts=False):
        if self.oom_on == self.device.type:
            raise ScoringOutOfMemoryError("no memory")
        return [float(len(p)) for p in prompts]


def settings(**kwargs) -> RuntimeSettings:
    return RuntimeSettings(models_dir=Path("m"), **kwargs)


def test_loads_once_on_first_use_and_reloads_when_settings_change() -> None:
    loads: list[RuntimeSettings] = []

    def loader(s: RuntimeSettings) -> FakeScorer:
        loads.append(s)
        return FakeScorer()

    runtime = ScorerRuntime(loader)
    assert runtime.loaded is None and loads == []  # nothing at start-up
    assert runtime.score(settings(batch_size=4), ["ab", "abc"], [None, None], clean_prompts=True) == [2.0, 3.0]
    runtime.score(settings(batch_size=8), ["a"], [None], clean_prompts=True)
    assert len(loads) == 1 and runtime.loaded.batch_size == 8
    runtime.score(settings(dtype="fp32"), ["a"], [None], clean_prompts=True)
    assert len(loads) == 2


def test_offloads_after_each_job_when_asked_and_comes_back() -> None:
    freed: list[int] = []
    scorer = FakeScorer()
    runtime = ScorerRuntime(lambda s: scorer, free_memory=lambda: freed.append(1))
    job = settings(keep_on_device=False)
    runtime.score(job, ["a"], [None], clean_prompts=False)
    runtime.score(job, ["b"], [None], clean_prompts=False)
    assert scorer.device.type == "cuda" and not freed  # batches of one job stay on the GPU
    runtime.job_done(job)
    assert scorer.device.type == "cpu" and freed
    runtime.score(job, ["a"], [None], clean_prompts=False)
    runtime.job_done(job)
    assert [m[0] for m in scorer.moves] == ["cpu", "cuda", "cpu"]
    runtime.job_done(settings(keep_on_device=True))
    assert scorer.device.type == "cpu"  # keeping is not loading: nothing moves back by itself


def test_out_of_memory_on_the_gpu_falls_back_to_the_cpu_then_returns() -> None:
    scorer = FakeScorer(oom_on="cuda")
    runtime = ScorerRuntime(lambda s: scorer)
    images = [torch.zeros(3, 4, 4)]
    assert runtime.score(settings(), ["abc"], images, clean_prompts=False) == [3.0]
    assert scorer.moves[0] == ("cpu", torch.float32)
    assert scorer.moves[1] == ("cuda", "float16")  # home again, in the precision "auto" means on a GPU
    assert scorer.device.type == "cuda"  # back home for the next batch
    runtime.score(settings(dtype="bf16"), ["abc"], images, clean_prompts=False)
    assert scorer.moves[-1] == ("cuda", "bfloat16")


def test_dtype_names_resolve_or_are_refused() -> None:
    from imagereward.errors import ImageRewardError
    from imagereward.webui.runtime import resolve_dtype_name

    assert resolve_dtype_name("auto", torch.device("cuda")) == "float16"
    assert resolve_dtype_name("auto", torch.device("cpu")) == "float32"
    assert resolve_dtype_name("fp32", torch.device("cuda")) == "float32"
    with pytest.raises(ImageRewardError, match="unknown dtype 'garbage'"):
        resolve_dtype_name("garbage", torch.device("cuda"))


def test_low_vram_offloads_after_each_scoring_pass_not_only_after_the_job() -> None:
    scorer = FakeScorer()
    runtime = ScorerRuntime(lambda s: scorer)
    low = settings(keep_on_device=False, offload_after_scoring=True)
    runtime.score(low, ["a"], [None], clean_prompts=False)
    runtime.scoring_done(low)
    assert scorer.device.type == "cpu"
    runtime.score(low, ["a"], [None], clean_prompts=False)
    assert scorer.device.type == "cuda"  # back for the pass
    runtime.scoring_done(settings())  # without low VRAM: stays
    assert scorer.device.type == "cuda"


def test_out_of_memory_on_the_cpu_is_reported() -> None:
    scorer = FakeScorer(oom_on="cpu")
    scorer.device = torch.device("cpu")
    runtime = ScorerRuntime(lambda s: scorer)
    with pytest.raises(ScoringOutOfMemoryError):
        runtime.score(settings(), ["a"], [None], clean_prompts=False)


def test_a_model_loaded_during_inference_mode_can_be_offloaded_afterwards(model_dir: Path) -> None:
    """Forge runs generation, and so our first load, under torch.inference_mode()."""
    from imagereward.scorer import ImageRewardScorer

    runtime = ScorerRuntime(lambda s: ImageRewardScorer.load(s.models_dir, device="cpu", offline=True, progress=False))
    with torch.inference_mode():
        runtime.score(RuntimeSettings(models_dir=model_dir), ["a cat"], [torch.rand(3, 32, 32)], clean_prompts=True)
    weight = runtime.loaded.model.vision.patch_embed.weight
    assert not weight.is_inference()
    runtime.loaded.to("cpu", torch.float16)  # an offload-style move outside inference mode works
    assert runtime.loaded.dtype == torch.float16


def test_one_scorer_in_memory_at_a_time_unless_kept() -> None:
    from dataclasses import replace

    loaded: list[tuple[str, ...]] = []
    freed: list[int] = []

    def loader(s: RuntimeSettings) -> FakeScorer:
        loaded.append(s.scorers)
        return FakeScorer()

    runtime = ScorerRuntime(loader, free_memory=lambda: freed.append(1))
    image_reward, pick = settings(), replace(settings(), scorers=("pickscore",))
    runtime.score(image_reward, ["a"], [None], clean_prompts=True)
    first = runtime.loaded
    assert runtime.score_table(pick, ["ab"], [None], clean_prompts=True) == {"pickscore": [2.0]}
    assert runtime.loaded is not first and freed == [1]  # the other model was let go before loading
    runtime.score(image_reward, ["a"], [None], clean_prompts=True)
    assert loaded == [("imagereward",), ("pickscore",), ("imagereward",)]  # so it loads again
    kept = replace(image_reward, keep_other_scorers=True)
    runtime.score(replace(kept, scorers=("pickscore",)), ["a"], [None], clean_prompts=True)
    runtime.score(kept, ["a"], [None], clean_prompts=True)
    runtime.score(replace(kept, scorers=("pickscore",)), ["a"], [None], clean_prompts=True)
    assert len(loaded) == 4  # with the setting on, both stay loaded: no reload when switching back and forth
