"""The same job on Ray Data, for more than one GPU or machine.

    source (shards: one task per shard, listed and read as the local run does; files: read_binary_files; a Parquet
    of paths: read_parquet)  ->  map_batches(prepare_batch)   CPU tasks: skip what the store holds, decode, preprocess
            ->  map_batches(ScoreActor)   an actor pool, the run's models in each actor (`actors`, `gpus_per_actor`)
            ->  the driver: iter_batches  ->  parts of the store, through the store's writer

No worker writes a file: the scored rows (a few hundred bytes each, no pixels) stream back to the driver, which
appends them to the store every `flush_rows` rows or `flush_seconds` as the local run does. So the store can be
wherever the driver can write, and nodes need no shared file system for the output. A driver killed midway loses at
most the rows not yet flushed, and the next run (local or Ray) scores exactly those again. The driver lists the source
once before the job, as the local run does (images found, already in the store, to score), and before it finishes
checks that every image to score came back once (count and a sum of key hashes), else says so.

Same listing, preprocessing, fingerprints and rows as the single-process path, so both give the same scores and
either can resume the other's store. Every node needs this package (and the model files at `models_dir`) installed,
and the inputs at the same paths. Staging folders (``STORE/.ray-*``) that earlier versions wrote are still adopted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import ImageRewardError
from . import deps, storage
from .items import SCORED, Item, as_text, key_hash, path_bytes
from .pipeline import RunPlan, RunSummary, Todo, _maybe_compact, _Pending, scorer_name, store_rows
from .prepare import ItemReader, Prepared, ReadOptions, prepare_data
from .scoring import load_run_scorers
from .sources import FileSource, ParquetSource, PathListSource, ShardSource, SourceError, shard_items, stat
from .store import DoneIndex, ResultStore, rows_to_table

#: Rows a prepare task hands over at a time (150 KB of pixels each).
PREPARE_ROWS = 64

_TEXT_COLUMNS = ("key", "path", "member", "prompt", "sha256", "error", "model", "needs")
_NEEDS_SEPARATOR = "\x1f"


def _mtime(path: str, cache: dict[str, int]) -> int:
    if path not in cache:
        found = stat(path)  # (a file, or an object by URL)
        cache[path] = found[1] if found else -1
    return cache[path]


def _size(path: str) -> int:
    found = stat(path)
    return found[0] if found else -1


def _items(batch: dict[str, Any], kind: str, cache: dict[str, int]) -> Iterator[tuple[Item, bytes | None]]:
    """(item, its bytes or None to read them) for each image of a batch of the source's dataset."""
    paths = batch["path"]
    if kind == "files":
        for path, data in zip(paths, batch["bytes"], strict=True):
            path = os.path.abspath(str(path))
            data = _blob(data)
            if data is None:  # (read_binary_files always gives bytes; read the file in the task otherwise)
                yield Item(key=as_text(path), path=path, size=_size(path), mtime_ns=_mtime(path, cache)), None
            else:
                yield Item(key=as_text(path), path=path, size=len(data), mtime_ns=_mtime(path, cache)), data
    elif kind == "parquet":
        prompts = batch.get("prompt", [None] * len(paths))
        for path, value in zip(paths, prompts, strict=True):
            path, prompt = str(path), _text(value)
            size, mtime = stat(path) or (-1, -1)  # (a file, or an object by URL)
            yield Item(key=as_text(path), path=path, size=size, mtime_ns=mtime, prompt=prompt), None
    else:  # shards: each one listed here exactly as the local run lists it (odd shards included)
        for shard in paths:
            try:
                for item in shard_items(str(shard)):
                    yield item, None
            except SourceError:
                continue  # the driver's listing reports the shard's problem once


def _blob(value: Any) -> bytes | None:
    """A binary column's value as Ray hands it over; anything else (None, or the NaN Ray fills gaps with) is absent."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    return None


def prepare_batch(
    batch: dict[str, Any], *, kind: str, plan: RunPlan, options: ReadOptions, rows: int = PREPARE_ROWS
) -> Iterator[dict[str, Any]]:
    """CPU stage: rows to score with the pixels of each of the run's layouts (`pixels0`, `pixels1`, …; zeros where
    the image could not be used) and the score columns each row needs, `rows` at a time (a shard's task would
    otherwise hand over all of its pixels in one block)."""
    reader = ItemReader(options)
    ready: list[tuple[Prepared, Todo]] = []
    try:
        for item, data in _items(batch, kind, {}):
            todo = plan.todo(item)
            if todo is None:
                continue
            ready.append((reader.prepare(item) if data is None else prepare_data(item, data, None, options), todo))
            if len(ready) >= rows:
                yield _columns(ready, options)
                ready = []
    finally:
        reader.close()
    if ready:
        yield _columns(ready, options)


def _columns(ready: list[tuple[Prepared, Todo]], options: ReadOptions) -> dict[str, Any]:
    columns: dict[str, list[Any]] = {name: [] for name in (*_TEXT_COLUMNS, "path_bytes")}
    for prepared, todo in ready:
        item = prepared.item
        for name, value in (
            ("key", item.key),
            ("path", as_text(item.path)),
            ("path_bytes", path_bytes(item.path)),
            ("member", None if item.member is None else as_text(item.member)),
            ("prompt", None if prepared.prompt is None else as_text(prepared.prompt)),
            ("sha256", prepared.sha256),
            ("error", None if prepared.error is None else as_text(prepared.error)),
            ("model", todo.model),
            ("needs", _NEEDS_SEPARATOR.join(sorted(todo.needs))),
        ):
            columns[name].append(value)
    out: dict[str, Any] = {name: np.array(values, dtype=object) for name, values in columns.items()}
    out["size"] = np.array([p.item.size for p, _ in ready], dtype=np.int64)
    out["mtime_ns"] = np.array([p.item.mtime_ns for p, _ in ready], dtype=np.int64)
    out["fingerprint"] = np.array([todo.fingerprint for _, todo in ready], dtype=np.int64)
    for g, geometry in enumerate(options.geometries):
        blank = geometry.blank()
        made = [p.pixels[g] if p.pixels is not None and p.pixels[g] is not None else blank for p, _ in ready]
        out[f"pixels{g}"] = np.stack(made) if made else np.zeros((0, *blank.shape), blank.dtype)
    return out


def _text(value: Any) -> str | None:
    """A string column's value as Ray hands it over (None, or NaN where a column held only nulls)."""
    if value is None or isinstance(value, (float, np.floating)):
        return None
    return str(value)


class ScoreActor:
    """One model per actor (on its GPU when the pool asks for one); batches of prepared rows -> store rows."""

    def __init__(
        self,
        models_dir: str | None,
        device: str,
        dtype: str,
        batch_size: int,
        offline: bool | None,
        plan: RunPlan,
        scorers: tuple[str, ...] = ("imagereward",),
        weights: str | None = None,
    ) -> None:
        self.run = load_run_scorers(
            scorers, models_dir, device=device, dtype=dtype, batch_size=batch_size, offline=offline, progress=False,
            weights=weights,
        )  # fmt: skip
        if self.run.weights != plan.weights:
            raise RuntimeError(f"this node's weights ({self.run.weights}) differ from the driver's ({plan.weights})")
        self.plan = plan
        self.name = scorer_name()

    def __call__(self, batch: dict[str, Any]) -> Any:
        n = len(batch["key"])
        meta = []
        for i in range(n):
            raw_path = _blob(batch["path_bytes"][i])
            real = os.fsdecode(raw_path) if raw_path else str(batch["path"][i])
            item = Item(
                key=str(batch["key"][i]),
                path=real,
                member=_text(batch["member"][i]),
                size=int(batch["size"][i]),
                mtime_ns=int(batch["mtime_ns"][i]),
            )
            needs = frozenset(filter(None, (_text(batch["needs"][i]) or "").split(_NEEDS_SEPARATOR)))
            todo = Todo(int(batch["fingerprint"][i]), _text(batch["model"][i]), needs)
            prompt, sha, error = _text(batch["prompt"][i]), _text(batch["sha256"][i]), _text(batch["error"][i])
            meta.append((item, todo, prompt, sha, error))
        every = list(range(n))
        pixels = [(batch[f"pixels{g}"], every) for g in range(len(self.run.geometries))]
        return rows_to_table(store_rows(self.run, meta, pixels, self.plan.clean, self.name))


def _init_ray(address: str | None, num_cpus: int | None) -> Any:
    ray = deps.ray()
    if not ray.is_initialized():
        if address in (None, "local"):
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return ray


class _Tally:
    """Images counted by key, order-free: how many, and the sum of their key hashes (mod 2**64). Two tallies are
    equal when the same keys were counted once each (a missing key and a repeated one do not cancel out)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def add(self, key: str) -> None:
        self.count += 1
        self.total = (self.total + key_hash(key)) & 0xFFFF_FFFF_FFFF_FFFF

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Tally) and (self.count, self.total) == (other.count, other.total)


class RayRunError(ImageRewardError):
    """The Ray job failed, or the rows that came back are not the images the run set out to score (what came back
    is in the store either way)."""


def _listing(source: Any, plan: RunPlan, summary: RunSummary) -> tuple[_Tally, list[str] | None]:
    """One pass over the source's items on the driver, as the local run makes: images found and skipped (into
    `summary`), the tally of those to score and, for sources of files, their paths (the dataset to read)."""
    expected = _Tally()
    paths: list[str] | None = [] if isinstance(source, (FileSource, PathListSource)) else None
    for item in source.items():
        summary.total += 1
        if plan.todo(item) is None:
            summary.skipped += 1
            continue
        expected.add(item.key)
        if paths is not None:
            paths.append(item.path)
    summary.problems = list(getattr(source, "problems", []))
    return expected, paths


def _dataset(ray: Any, source: Any, paths: list[str] | None) -> tuple[Any, str]:
    """Ray's dataset of the source (`paths`: the files to score, for sources of files) and how to read its rows."""
    if isinstance(source, ShardSource):  # one block per shard: a task lists and reads it (see `_items`)
        rows = [{"path": shard} for shard in source.shards]
        return ray.data.from_items(rows, override_num_blocks=len(rows)), "shards"
    if isinstance(source, ParquetSource):
        columns = [source.path_column] + ([source.prompt_column] if source.prompt_column else [])
        where = source.location
        if where is None:
            ds = ray.data.read_parquet(str(source.file))
        else:
            ds = ray.data.read_parquet(where.path, filesystem=where.fs)
        ds = ds.select_columns(columns)
        base = source.base
        renames = {source.path_column: "path"} | ({source.prompt_column: "prompt"} if source.prompt_column else {})
        ds = ds.rename_columns(renames)

        def absolute(batch: dict[str, Any]) -> dict[str, Any]:
            batch["path"] = np.array([_listed(str(p), base) for p in batch["path"]], dtype=object)
            return batch

        return ds.map_batches(absolute, batch_format="numpy"), "parquet"
    if isinstance(source, PathListSource):  # paths read in the CPU tasks, so a missing file becomes an error row
        return ray.data.from_items([{"path": path} for path in paths or []]), "parquet"
    if isinstance(source, FileSource):
        return ray.data.read_binary_files(paths, include_paths=True), "files"
    raise TypeError(f"no Ray reader for {type(source).__name__}")


def _listed(path: str, base: str) -> str:
    """A path from a Parquet list, relative ones taken from the list's folder (a URL for a list on object storage)."""
    if storage.is_url(path):
        return path
    if storage.is_url(base):
        return path if os.path.isabs(path) else storage.join(base, path)
    return os.path.join(base, path)


def _stream(ds: Any) -> Iterator[Any]:
    """The scored rows as Arrow tables, as the actors finish them (streaming: the driver holds a few blocks)."""
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=1)


def run_ray(
    source: Any,
    store: str | os.PathLike[str] | ResultStore,
    *,
    address: str | None = None,
    models_dir: str | None = None,
    offline: bool | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 16,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    actor_resources: dict[str, float] | None = None,
    rescore: bool = False,
    scorers: tuple[str, ...] | list[str] = ("imagereward",),
    weights: str | None = None,
    prompt: str | None = None,
    clean_prompts: bool = True,
    caption_field: str = "caption",
    hash_files: bool = False,
    num_cpus: int | None = None,
    flush_rows: int = 100_000,
    flush_seconds: float = 30.0,
    should_stop: Callable[[], bool] | None = None,
) -> RunSummary:
    """Score `source` into `store` with Ray Data (`address`: None or "local" for a local instance, or a cluster's).

    actor_resources: custom Ray resources each scoring actor needs (e.g. {"scorer": 1} to place them on some nodes).
    flush_rows, flush_seconds: how often the driver appends the rows that came back to the store (rows take about
        230 bytes in Arrow, and the driver handles some 700,000 a second: many GPUs' rows make few, large parts).
    should_stop: polled after each block of rows; True ends the run early (what came back is kept). Ctrl-C does the
        same; either way the summary says `interrupted`.
    scorers, weights: as `pipeline.score_collection`'s (each scorer fills its own column).
    Raises RayRunError when the rows that came back are not the images to score (they are kept all the same).
    """
    started = time.monotonic()
    results = store if isinstance(store, ResultStore) else ResultStore.create(store)
    summary = RunSummary(store=results.name)
    with results.writer() as writer:  # (adopts the staging folders that killed runs of earlier versions left)
        # The driver loads the models once on the CPU for their records (`columns`), as the actors will on theirs.
        probe = load_run_scorers(scorers, models_dir, device="cpu", offline=offline, progress=False, weights=weights)
        plan = RunPlan(probe.weights, clean_prompts, prompt, rescore, DoneIndex.empty())
        geometries, needs_prompt = tuple(probe.geometries), probe.needs_prompt
        del probe
        plan.index = results.index(plan.weights)
        expected, paths = _listing(source, plan, summary)
        received = _Tally()
        if expected.count:
            ray = _init_ray(address, num_cpus)
            ds, kind = _dataset(ray, source, paths)
            options = ReadOptions(prompt, caption_field, True, hash_files, geometries, needs_prompt)
            ds = ds.map_batches(
                prepare_batch,
                fn_kwargs={"kind": kind, "plan": plan, "options": options},
                batch_format="numpy",
                batch_size=1 if kind == "shards" else PREPARE_ROWS,
            )
            ds = ds.map_batches(
                ScoreActor,
                fn_constructor_kwargs={
                    "models_dir": models_dir,
                    "device": device if gpus_per_actor == 0 or device != "auto" else "cuda",
                    "dtype": dtype,
                    "batch_size": batch_size,
                    "offline": offline,
                    "plan": plan,
                    "scorers": tuple(scorers),
                    "weights": weights,
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_gpus=gpus_per_actor,
                resources=actor_resources or None,
            )
            try:
                _receive(ds, _Pending(writer, flush_rows, flush_seconds), summary, received, should_stop)
            except ray.exceptions.RayError as exc:  # (a task's or actor's error, with its traceback on the node)
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                raise RayRunError(
                    f"Ray run failed: {lines[-1] if lines else type(exc).__name__}; the {received.count} row(s) that "
                    f"came back are in {results.name}"
                ) from exc
        summary.elapsed_s = time.monotonic() - started
        if not summary.interrupted and received != expected:
            raise RayRunError(
                f"Ray run: {received.count} row(s) came back for {expected.count} image(s) to score, not each image "
                f"once; the rows are in {results.name}, and the next run scores what is missing"
            )
        _maybe_compact(results)
    summary.problems.extend(p for p in results.problems if p not in summary.problems)
    return summary


def _receive(
    ds: Any, pending: _Pending, summary: RunSummary, received: _Tally, should_stop: Callable[[], bool] | None
) -> None:
    """Append the rows as they come back; whatever ends the run, what came back is flushed to the store."""
    pc = deps.pyarrow().compute
    blocks = _stream(ds)
    try:
        for table in blocks:
            pending.add(table)
            for key in table.column("key").to_pylist():
                received.add(key)
            failed = int(pc.sum(pc.not_equal(table.column("status"), SCORED)).as_py() or 0)
            summary.scored += table.num_rows - failed
            summary.failed += failed
            if should_stop is not None and should_stop():
                summary.interrupted = True
                break
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        getattr(blocks, "close", lambda: None)()  # stops Ray's execution when the run ends early
        pending.flush()
