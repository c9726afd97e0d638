"""Scoring a collection into a store, incrementally, with bounded memory.

Decode workers (a torch `DataLoader` over an iterable dataset; each worker lists its own partition of the source,
skips what the store already holds, decodes and preprocesses, and hands over batches of uint8 pixels) run in
parallel with the model in the main process. Memory is bounded by the workers' prefetch (2 batches each), one float
batch per pixel layout (on the model's device, reused every step: `RunScorers.pixels`) and the rows waiting to be
flushed, whatever the collection's size. Rows are flushed to the store as a new part every `flush_rows` rows or
`flush_seconds`, and once more when the run ends, is interrupted or fails.

Tar shards are planned first (`plan_shards`): a shard the store's log (`shardlog`) marks finished, with the same
content fingerprint and scoring identity, is skipped without being listed; only the other shards are listed, and the
store's index of what is scored (16 bytes an image) covers only their rows. A worker tells the main process when it
has listed a shard to its end (a `ShardDone` with its last batch); the shard's mark is written after the part holding
its last rows. The index is built before the workers start and reaches them by fork (read only, so its pages stay
shared); where workers are spawned (macOS, Windows) each gets a pickled copy.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ..errors import ImageRewardError
from . import deps
from .columns import weights_column
from .items import FAILED, SCORED, Item, as_text, fingerprint, path_bytes
from .pershard import PerShardWriter
from .prepare import ItemReader, Prepared, ReadOptions
from .scoring import RunScorers, load_run_scorers
from .scoring import model_id as model_id  # (the name ray_job and earlier callers import from here)
from .shardlog import Identity, ShardLog, ShardMark, content_fingerprint
from .sources import ShardDone, ShardSource, Source
from .store import DoneIndex, ResultStore, rows_to_table

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
    columns: dict[str, int] = field(default_factory=dict)  # score column -> images given a score in it by this run


@dataclass(frozen=True)
class Todo:
    """What a run does for one item: the fingerprint (and earlier-version model) its row carries, and the score
    columns it lacks."""

    fingerprint: int
    model: str | None
    needs: frozenset[str]


@dataclass
class RunPlan:
    """What decides which items a run scores, and which of its scorers; the same in every worker.

    weights: score column -> the record the run's scorer writes (`columns`); an image needs a column unless the
    store holds a score of its current content made by those weights."""

    weights: dict[str, str]
    clean: bool
    fixed_prompt: str | None
    rescore: bool
    index: DoneIndex

    def todo(self, item: Item) -> Todo | None:
        """What to score for the item, None when the store already holds every column the run fills."""
        content = fingerprint(item, self.fixed_prompt, "", self.clean)
        every = frozenset(self.weights)
        entry = None if self.rescore else self.index.get(item.key)
        if entry is None:
            return Todo(content, None, every)
        if entry.model is not None:  # written by an earlier version, which folded ImageReward's model id in
            if entry.fingerprint != fingerprint(item, self.fixed_prompt, entry.model, self.clean):
                return Todo(content, None, every)
        elif entry.fingerprint != content:
            return Todo(content, None, every)
        if entry.failed:
            return None  # (the same bytes would fail again)
        needs = every - entry.valid
        # The same content: the new row keeps the key's fingerprint, so `merge` joins its scores to the older ones.
        return Todo(entry.fingerprint, entry.model, needs) if needs else None

    @property
    def identity(self) -> Identity:
        return Identity.of(self.weights, self.clean, self.fixed_prompt)


@dataclass
class ShardPlan:
    """What a run lists: the source less the finished shards, and what was learnt planning it."""

    source: Source
    shards: list[str] | None = None  # names of the shards to list (None: not a shard source)
    fingerprints: dict[str, str] = field(default_factory=dict)  # their content fingerprints, read before listing
    paths: dict[str, str] = field(default_factory=dict)  # their paths
    skipped: int = 0  # images in the finished shards left out


def plan_shards(source: Source, log: ShardLog, identity: Identity, rescore: bool) -> ShardPlan:
    """Leave out the shards the store's log marks finished for this content and identity (read: 128 KiB a shard)."""
    if not isinstance(source, ShardSource):
        return ShardPlan(source)
    marks = {} if rescore else log.read()
    keep: list[int] = []
    plan = ShardPlan(source, [])
    for i, (path, name) in enumerate(zip(source.shards, source.names, strict=True)):
        try:
            fp: str | None = content_fingerprint(path)
        except (OSError, ImageRewardError):
            fp = None  # listing it says what is wrong
        mark = marks.get(name)
        if fp is not None and mark is not None and mark.fingerprint == fp and mark.identity == identity:
            plan.skipped += mark.members
            continue
        keep.append(i)
        plan.paths[name] = path
        if fp is not None:
            plan.fingerprints[name] = fp
    plan.source = source.subset(keep)
    plan.shards = [source.names[i] for i in keep]
    return plan


def scorer_name() -> str:
    from .. import __version__

    return f"imagereward {__version__}"


class _Batches(torch.utils.data.IterableDataset):
    """Batches of prepared items; in worker w of W it reads the source's partition w of W."""

    def __init__(
        self, source: Source, plan: RunPlan, options: ReadOptions, batch_size: int, layouts: Any = None
    ) -> None:
        self.source, self.plan, self.options, self.batch_size = source, plan, options, batch_size
        self.layouts = layouts  # needs -> the geometries to make (None: every one)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        part, parts = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = ItemReader(self.options)
        ready: list[tuple[Prepared, Todo]] = []
        finished: list[ShardDone] = []  # shards listed to their end: sent with (or after) their last items
        listed = (
            self.source.walk(part, parts) if isinstance(self.source, ShardSource) else self.source.items(part, parts)
        )
        try:
            for item in listed:
                if isinstance(item, ShardDone):
                    finished.append(item)
                    continue
                todo = self.plan.todo(item)
                if todo is None:
                    continue
                wanted = self.layouts(todo.needs) if self.layouts is not None else None
                ready.append((reader.prepare(item, wanted), todo))
                if len(ready) >= self.batch_size:
                    yield _collate(ready, finished)
                    ready, finished = [], []
            if ready or finished:
                yield _collate(ready, finished)
        finally:
            reader.close()


def _collate(ready: list[tuple[Prepared, Todo]], finished: list[ShardDone] | None = None) -> dict[str, Any]:
    """A batch: each geometry's arrays stacked (with the batch positions they belong to), each item's meta, and the
    shards listed to their end with it."""
    count = max((len(p.pixels) for p, _ in ready if p.pixels is not None), default=0)
    pixels: list[tuple[Any, list[int]] | None] = []
    for g in range(count):
        positions = [i for i, (p, _) in enumerate(ready) if p.pixels is not None and p.pixels[g] is not None]
        arrays = [ready[i][0].pixels[g] for i in positions]  # type: ignore[index]
        pixels.append((torch.from_numpy(np.stack(arrays)), positions) if positions else None)
    meta = [(p.item, todo, p.prompt, p.sha256, p.error, p.width, p.height) for p, todo in ready]
    return {"pixels": pixels, "meta": meta, "finished": list(finished or [])}


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
    scorers: Sequence[str] = ("imagereward",),
    weights: str | None = None,
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
    per_shard_dir: str | os.PathLike[str] | None = None,
) -> RunSummary:
    """Score the images of `source` that the store does not hold yet (all of them with `rescore`).

    scorer: scorers already loaded (an `ImageRewardScorer`, or a `registry.ScorerSet`: the WebUI's; one holding a
        `batch_lock` has it held around each batch), else `scorers` (names, as the command line's --scorer: one,
        several, "ensemble" with `weights`) are loaded from `models_dir`. Each scorer fills its own column
        (`columns`); an image is scored by those whose column it lacks (or holds from other weights).
    workers: decode processes (0: decode in this process, between batches).
    torch_threads: the model's CPU threads in this process during the run (restored afterwards; None: as they are).
        With decode workers on a small CPU, cores minus workers avoids oversubscription, which costs torch's
        CPU kernels several times their speed.
    progress: called after each batch with a `Progress`; should_stop: polled after each batch, True ends the run
        early (what was scored is kept; the next run goes on from there).
    per_shard_dir: for tar shards, also write each shard's rows as ``<shard>.parquet`` there when it finishes
        (`pershard`); a file of that name that this package did not write is never replaced (ImageRewardError).
    Raises ImageRewardError for a store or source that cannot be used; per-image problems become rows with an error.
    """
    started = time.monotonic()
    results = store if isinstance(store, ResultStore) else ResultStore.create(store)
    summary = RunSummary(store=results.name)
    with _model_threads(torch_threads), results.writer() as writer:
        if scorer is None:
            run = load_run_scorers(
                scorers, models_dir, device=device, dtype=dtype, batch_size=batch_size, offline=offline,
                weights=weights,
            )  # fmt: skip
        else:
            run = RunScorers(scorer, lock=getattr(scorer, "batch_lock", None))
        plan = RunPlan(run.weights, clean_prompts, prompt, rescore, DoneIndex.empty())
        results.rows()  # (parts' footers: a damaged part is set aside, and the shards' marks with it, before planning)
        shards = plan_shards(source, results.shard_log(), plan.identity, rescore)
        outputs = None
        if per_shard_dir is not None and shards.shards is not None:
            outputs = PerShardWriter(per_shard_dir, results)
            outputs.check(shards.shards)
        if not rescore:
            plan.index = results.index(shards.shards, run.weights)
        if outputs is not None:
            outputs.index = plan.index
        found, todo = count_todo(shards.source, plan)
        summary.total, summary.skipped = found + shards.skipped, found - todo + shards.skipped
        summary.problems = list(getattr(source, "problems", []))
        options = ReadOptions(
            prompt, caption_field, exif_orientation, hash_files, tuple(run.geometries), run.needs_prompt
        )
        nothing = shards.shards == []  # every shard finished: no worker is started
        loader = _Batches(shards.source, plan, options, batch_size, run.layouts)
        batches = [] if nothing else _batch_loader(loader, workers)
        pending = _Pending(writer, flush_rows, flush_seconds, _Marks(results, shards, plan.identity, outputs))
        clock = _Clock(started, todo)
        name = scorer_name()
        try:
            for batch in batches:
                rows = _score_batch(run, batch, plan, name)
                pending.add(rows, batch.get("finished", []))
                failed = sum(row["status"] != SCORED for row in rows)
                summary.scored += len(rows) - failed
                for column in run.columns:
                    summary.columns[column] = summary.columns.get(column, 0) + sum(
                        row.get(column) is not None for row in rows
                    )
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
        pending.marks.log.merge()  # (one log part a run: a rerun reads one small file)
        summary.problems.extend(p for p in pending.marks.problems if p not in summary.problems)
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


class _Marks:
    """Shards listed to their end in this run: marked finished in the store's log (and their per-shard results
    written) once the part holding their last rows is on disk."""

    def __init__(self, store: ResultStore, plan: ShardPlan, identity: Identity, outputs: PerShardWriter | None) -> None:
        self.log, self.plan, self.identity, self.outputs = store.shard_log(), plan, identity, outputs
        self.waiting: list[ShardDone] = []
        self.problems: list[str] = []

    def add(self, rows: list[dict[str, Any]], finished: list[ShardDone]) -> None:
        if self.outputs is not None:
            self.outputs.add(rows)
        self.waiting.extend(finished)

    def written(self) -> None:
        """Call after the rows added so far are in the store."""
        done, self.waiting = self.waiting, []
        marks = [
            ShardMark(d.name, fp, self.identity, d.members, self.plan.paths.get(d.name, ""))
            for d in done
            if d.complete and (fp := self.plan.fingerprints.get(d.name)) is not None
        ]
        self.log.append(marks)
        if self.outputs is not None:
            for d in done:
                problem = self.outputs.finish(d.name, d.members)
                if problem is not None:
                    self.problems.append(problem)


class _Pending:
    """Rows scored but not yet in the store: written every `rows` rows or `seconds` seconds, and at the end. Rows come
    as dicts (this run's) or as Arrow tables with the store's columns (the Ray job's)."""

    def __init__(self, writer: Any, rows: int, seconds: float, marks: _Marks | None = None) -> None:
        self.writer, self.rows, self.seconds, self.marks = writer, rows, seconds, marks
        # Dict rows are kept as dicts and made into one table at the flush: a small Arrow table per batch raised the
        # run's peak memory from 0.55 to 1.1-1.4 GB (bench/resume_benchmark.py, 2026-12-07).
        self.dicts: list[dict[str, Any]] = []
        self.tables: list[Any] = []
        self.count = 0
        self.last = time.monotonic()

    def add(self, rows: list[dict[str, Any]] | Any, finished: Sequence[ShardDone] = ()) -> None:
        """Rows, and the shards whose last rows these are (or were already added)."""
        is_table = hasattr(rows, "num_rows")
        if self.marks is not None:
            self.marks.add([] if is_table else rows, list(finished))
        if not is_table and not rows:
            return  # (a batch bringing only shards that finished)
        if is_table:
            self.tables.append(rows)
            self.count += rows.num_rows
        else:
            self.dicts.extend(rows)
            self.count += len(rows)
        if self.count >= self.rows or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        tables = self.tables + ([rows_to_table(self.dicts)] if self.dicts else [])
        if tables:
            self.writer.append(
                tables[0] if len(tables) == 1 else deps.pyarrow().concat_tables(tables, promote_options="default")
            )
        self.dicts, self.tables, self.count, self.last = [], [], 0, time.monotonic()
        if self.marks is not None:
            self.marks.written()  # (only after the rows: a mark never stands for rows that are not on disk)


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


def _score_batch(run: RunScorers, batch: dict[str, Any], plan: RunPlan, name: str) -> list[dict[str, Any]]:
    return store_rows(run, batch["meta"], batch["pixels"], plan.clean, name)


def store_rows(
    run: RunScorers,
    meta: Sequence[tuple[Any, ...]],
    pixels: Sequence[tuple[Any, list[int]] | None],
    clean: bool,
    name: str,
) -> list[dict[str, Any]]:
    """Store rows for prepared items: (item, todo, prompt, sha256, error[, width, height]) each, and for each of the
    run's geometries the stacked arrays of the items that have them with their positions in `meta`. A row holds the
    columns its item needed (and the ensemble's members, computed for it); the others stay null, and `merge` joins
    them to the scores older rows of the same content hold."""
    needs = [m[1].needs if m[4] is None else frozenset() for m in meta]
    scores = run.score([m[2] for m in meta], needs, pixels, clean) if any(needs) else [{} for _ in meta]
    now = datetime.now(timezone.utc)
    rows = []
    for (item, todo, prompt, sha, error, *size), values in zip(meta, scores, strict=True):
        width, height = size if size else (None, None)
        row = {
            **{column: value for column, value in values.items()},
            **{weights_column(column): run.weights[column] for column in values},
        }
        rows.append(
            {
                **row,
                "key": item.key,
                "path": as_text(item.path),
                "path_bytes": path_bytes(item.path),
                "member": None if item.member is None else as_text(item.member),
                "size": item.size,
                "mtime_ns": item.mtime_ns,
                "sha256": sha,
                "prompt": None if prompt is None else as_text(prompt),
                "status": SCORED if error is None else FAILED,
                "error": None if error is None else as_text(error),
                "model": todo.model,
                "scorer": name,
                "clean_prompt": clean,
                "fingerprint": todo.fingerprint,
                "scored_at": now,
                "shard": item.shard,
                "__key__": item.wds_key,
                "width": width,
                "height": height,
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
