"""Scoring a collection into a store, incrementally, with bounded memory.

Decode workers (a torch `DataLoader` over an iterable dataset; each worker lists its own partition of the source,
skips what the store already holds, decodes and preprocesses, and hands over batches of uint8 pixels) run in
parallel with the model in the main process. Memory is bounded by the workers' prefetch (2 batches each) and the
rows waiting to be flushed, whatever the collection's size; the store's index of finished images costs 16 bytes an
image. Rows are flushed to the store as a new part every `flush_rows` rows or `flush_seconds`, and once more when the
run ends, is interrupted or fails.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ..errors import ImageRewardError
from .items import FAILED, SCORED, Item, as_text, fingerprint, path_bytes
from .prepare import ItemReader, Prepared, ReadOptions
from .sources import Source
from .store import DoneIndex, ResultStore

#: Compact the store after a run when it holds at most this many rows (else only when parts pile up).
COMPACT_ROWS = 2_000_000
COMPACT_PARTS = 64


@dataclass
class Progress:
    """Reported after each batch. `total` counts the images this run has to score (those not in the store)."""

    done: int
    total: int
    failed: int
    skipped: int
    elapsed_s: float
    images_per_s: float
    eta_s: float | None


@dataclass
class RunSummary:
    scored: int = 0
    failed: int = 0
    skipped: int = 0  # already in the store, unchanged
    total: int = 0  # images found
    elapsed_s: float = 0.0
    interrupted: bool = False
    store: str = ""
    problems: list[str] = field(default_factory=list)  # inputs that could not be listed (broken shards), damaged parts


@dataclass
class RunPlan:
    """What decides which items a run scores; the same in every worker."""

    model: str
    clean: bool
    fixed_prompt: str | None
    rescore: bool
    index: DoneIndex

    def todo(self, item: Item) -> int | None:
        """The item's fingerprint when it must be scored, None when the store already holds it."""
        fp = fingerprint(item, self.fixed_prompt, self.model, self.clean)
        if not self.rescore and self.index.is_done(item.key, fp):
            return None
        return fp


def model_id(scorer: Any) -> str:
    """A short, stable identity of the loaded weights: a hash of the reward head (fp32 on every device)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(scorer.model.head.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def scorer_name() -> str:
    from .. import __version__

    return f"imagereward {__version__}"


class _Batches(torch.utils.data.IterableDataset):
    """Batches of prepared items; in worker w of W it reads the source's partition w of W."""

    def __init__(self, source: Source, plan: RunPlan, options: ReadOptions, batch_size: int) -> None:
        self.source, self.plan, self.options, self.batch_size = source, plan, options, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        part, parts = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = ItemReader(self.options)
        ready: list[tuple[Prepared, int]] = []
        try:
            for item in self.source.items(part, parts):
                fp = self.plan.todo(item)
                if fp is None:
                    continue
                ready.append((reader.prepare(item), fp))
                if len(ready) >= self.batch_size:
                    yield _collate(ready)
                    ready = []
            if ready:
                yield _collate(ready)
        finally:
            reader.close()


def _collate(ready: list[tuple[Prepared, int]]) -> dict[str, Any]:
    good = [p.pixels for p, _ in ready if p.pixels is not None]
    # Channels first and contiguous here, in the worker, so the main process only scores.
    pixels = torch.from_numpy(np.ascontiguousarray(np.stack(good).transpose(0, 3, 1, 2))) if good else None
    meta = [(p.item, fp, p.prompt, p.sha256, p.error) for p, fp in ready]
    return {"pixels": pixels, "meta": meta}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is PIL's work; one thread per worker leaves the cores to the model


def count_todo(source: Source, plan: RunPlan) -> tuple[int, int]:
    """(images found, images to score): one listing pass, nothing decoded."""
    found = todo = 0
    for item in source.items():
        found += 1
        if plan.todo(item) is not None:
            todo += 1
    return found, todo


def score_collection(
    source: Source,
    store: str | os.PathLike[str] | ResultStore,
    *,
    scorer: Any = None,
    models_dir: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    offline: bool | None = None,
    batch_size: int = 16,
    workers: int = 0,
    rescore: bool = False,
    prompt: str | None = None,
    clean_prompts: bool = True,
    caption_field: str = "caption",
    exif_orientation: bool = True,
    hash_files: bool = False,
    flush_rows: int = 1024,
    flush_seconds: float = 30.0,
    torch_threads: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunSummary:
    """Score the images of `source` that the store does not hold yet (all of them with `rescore`).

    scorer: an `ImageRewardScorer` already loaded (the WebUI's), else one is loaded from `models_dir`.
    workers: decode processes (0: decode in this process, between batches).
    torch_threads: the model's CPU threads in this process during the run (restored afterwards; None: as they are).
        With decode workers on a small CPU, cores minus workers avoids oversubscription, which costs torch's
        CPU kernels several times their speed.
    progress: called after each batch with a `Progress`; should_stop: polled after each batch, True ends the run
        early (what was scored is kept; the next run goes on from there).
    Raises ImageRewardError for a store or source that cannot be used; per-image problems become rows with an error.
    """
    started = time.monotonic()
    results = store if isinstance(store, ResultStore) else ResultStore.create(store)
    summary = RunSummary(store=results.name)
    with _model_threads(torch_threads), results.writer() as writer:
        if scorer is None:
            from ..scorer import ImageRewardScorer

            scorer = ImageRewardScorer.load(
                models_dir, device=device, dtype=dtype, batch_size=batch_size, offline=offline, progress=True
            )
        plan = RunPlan(model_id(scorer), clean_prompts, prompt, rescore, results.index())
        summary.total, todo = count_todo(source, plan)
        summary.skipped = summary.total - todo
        summary.problems = list(getattr(source, "problems", []))
        options = ReadOptions(prompt, caption_field, exif_orientation, hash_files)
        batches = _batch_loader(_Batches(source, plan, options, batch_size), workers)
        pending = _Pending(writer, flush_rows, flush_seconds)
        clock = _Clock(started, todo)
        name = scorer_name()
        try:
            for batch in batches:
                rows = _score_batch(scorer, batch, plan, name)
                pending.add(rows)
                failed = sum(row["status"] != SCORED for row in rows)
                summary.scored += len(rows) - failed
                summary.failed += failed
                if progress is not None:
                    progress(clock.progress(summary))
                if should_stop is not None and should_stop():
                    summary.interrupted = True
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            pending.flush()  # what was scored is never lost, whatever ends the run
            summary.elapsed_s = time.monotonic() - started
        _maybe_compact(results)
    summary.problems.extend(p for p in results.problems if p not in summary.problems)  # damaged parts set aside
    return summary


def _batch_loader(batches: _Batches, workers: int) -> Any:
    """The prepared batches, decoded in `workers` processes (0: in this one, between batches)."""
    return torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        num_workers=max(0, workers),
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )


class _Pending:
    """Rows scored but not yet in the store: written every `rows` rows or `seconds` seconds, and at the end."""

    def __init__(self, writer: Any, rows: int, seconds: float) -> None:
        self.writer, self.rows, self.seconds = writer, rows, seconds
        self.pending: list[dict[str, Any]] = []
        self.last = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= self.rows or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        self.writer.append(self.pending)
        self.pending, self.last = [], time.monotonic()


class _Clock:
    """A run's `Progress`: rates leave out the first batch (worker start, first forward pass)."""

    def __init__(self, started: float, todo: int) -> None:
        self.started, self.todo = started, todo
        self.first_at: float | None = None
        self.first_done = 0

    def progress(self, summary: RunSummary) -> Progress:
        now = time.monotonic()
        done = summary.scored + summary.failed
        if self.first_at is None:
            self.first_at, self.first_done = now, done
        span = now - self.first_at
        rate = (done - self.first_done) / span if span > 0 else 0.0
        eta = (self.todo - done) / rate if rate > 0 else None
        return Progress(done, self.todo, summary.failed, summary.skipped, now - self.started, rate, eta)


@contextlib.contextmanager
def _model_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _score_batch(scorer: Any, batch: dict[str, Any], plan: RunPlan, name: str) -> list[dict[str, Any]]:
    return store_rows(scorer, batch["meta"], batch["pixels"], plan.model, plan.clean, name)


def store_rows(
    scorer: Any,
    meta: list[tuple[Item, int, str | None, str | None, str | None]],
    pixels: Any,
    model: str,
    clean: bool,
    name: str,
) -> list[dict[str, Any]]:
    """Store rows for prepared items: (item, fingerprint, prompt, sha256, error) each, and the pixels (B, 3, 224,
    224) uint8 of those without an error, in order."""
    good = [m for m in meta if m[4] is None]
    scores: list[float] = []
    if good:
        scores = scorer.score([m[2] for m in good], pixels, clean_prompts=clean)
    next_score = iter(scores)
    now = datetime.now(timezone.utc)
    rows = []
    for item, fp, prompt, sha, error in meta:
        rows.append(
            {
                "key": item.key,
                "path": as_text(item.path),
                "path_bytes": path_bytes(item.path),
                "member": None if item.member is None else as_text(item.member),
                "size": item.size,
                "mtime_ns": item.mtime_ns,
                "sha256": sha,
                "prompt": None if prompt is None else as_text(prompt),
                "score": next(next_score) if error is None else None,
                "status": SCORED if error is None else FAILED,
                "error": None if error is None else as_text(error),
                "model": model,
                "scorer": name,
                "clean_prompt": clean,
                "fingerprint": fp,
                "scored_at": now,
            }
        )
    return rows


def _maybe_compact(store: ResultStore) -> None:
    parts = store.parts()
    if len(parts) < 2:
        return
    rows = store.rows()  # (sets a part with a damaged footer aside)
    if rows <= COMPACT_ROWS or len(parts) >= COMPACT_PARTS:
        with contextlib.suppress(ImageRewardError):  # a full disk leaves the parts as they are: still correct
            store.compact()
