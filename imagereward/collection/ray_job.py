"""The same job on Ray Data, for more than one GPU or machine.

    source (Ray's readers: read_binary_files for files, read_webdataset for tar shards, read_parquet for a Parquet of
    paths)  ->  map_batches(prepare_batch)   CPU tasks: skip what the store holds, decode, preprocess (as locally)
            ->  map_batches(ScoreActor)      an actor pool, one model per actor (`actors`, `gpus_per_actor`)
            ->  write_parquet(STORE/.ray-<id>/)  then each complete file becomes a part of the store

Same preprocessing, fingerprints and rows as the single-process path, so both give the same scores and either can
resume the other's store. A run killed midway leaves complete files in its staging folder; the next run (local or
Ray) adds them to the store before deciding what is left to score, so at most the unfinished files' rows are scored
again. Every node needs this package (and the model files at `models_dir`) installed.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import numpy as np

from . import deps, storage
from .items import IMAGE_SIZE_PIXELS, Caption, Item, as_text, path_bytes
from .pipeline import RunPlan, RunSummary, model_id, scorer_name, store_rows
from .prepare import ReadOptions, prepare_data
from .sources import IMAGE_SUFFIXES, FileSource, ParquetSource, PathListSource, ShardSource, stat
from .store import DoneIndex, ResultStore, rows_to_table

_TEXT_COLUMNS = ("key", "path", "member", "prompt", "sha256", "error")


def _mtime(path: str, cache: dict[str, int]) -> int:
    if path not in cache:
        found = stat(path)  # (a file, or an object by URL)
        cache[path] = found[1] if found else -1
    return cache[path]


def _items(batch: dict[str, Any], kind: str, cache: dict[str, int]) -> list[tuple[Item, bytes | None, bytes | None]]:
    """(item, image bytes or None to read, caption bytes) per row of a reader's batch."""
    out: list[tuple[Item, bytes | None, bytes | None]] = []
    n = len(batch["path"])
    if kind == "files":
        for path, data in zip(batch["path"], batch["bytes"], strict=True):
            path = os.path.abspath(str(path))
            item = Item(key=as_text(path), path=path, size=len(data), mtime_ns=_mtime(path, cache))
            out.append((item, bytes(data), None))
    elif kind == "parquet":
        prompts = batch.get("prompt", [None] * n)
        for path, value in zip(batch["path"], prompts, strict=True):
            path, prompt = str(path), _text(value)
            size, mtime = stat(path) or (-1, -1)
            item = Item(key=as_text(path), path=path, size=size, mtime_ns=mtime, prompt=prompt)
            out.append((item, None, None))
    else:  # webdataset rows: __key__, path (the shard), one column per suffix
        columns = {name.lower(): name for name in batch if not name.startswith("__") and name != "path"}
        for i in range(n):
            shard, key = str(batch["path"][i]), str(batch["__key__"][i])
            shard = shard if storage.is_url(shard) else os.path.abspath(shard)
            image_ext = next(
                (e for e in columns if f".{e}" in IMAGE_SUFFIXES and batch[columns[e]][i] is not None), None
            )
            if image_ext is None:
                continue  # a key without an image, as the local reader skips it
            data = bytes(batch[columns[image_ext]][i])
            caption_raw, caption = None, None
            for ext in ("txt", "json"):
                if ext in columns and batch[columns[ext]][i] is not None:
                    caption_raw = bytes(batch[columns[ext]][i])
                    caption = Caption(0, len(caption_raw), ext)
                    break
            item = Item(
                key=f"{as_text(shard)}#{as_text(key)}",
                path=shard,
                size=len(data),
                mtime_ns=_mtime(shard, cache),
                member=f"{key}.{image_ext}",
                offset=0,
                caption=caption,
            )
            out.append((item, data, caption_raw))
    return out


def prepare_batch(batch: dict[str, Any], *, kind: str, plan: RunPlan, options: ReadOptions) -> dict[str, Any]:
    """CPU stage: rows to score, with their uint8 pixels (zeros where the image could not be used)."""
    from .prepare import ItemReader

    reader = ItemReader(options)
    columns: dict[str, list[Any]] = {
        name: [] for name in (*_TEXT_COLUMNS, "path_bytes", "size", "mtime_ns", "fingerprint")
    }
    pixels: list[np.ndarray] = []
    blank = np.zeros(IMAGE_SIZE_PIXELS, np.uint8)
    try:
        for item, data, caption in _items(batch, kind, {}):
            fp = plan.todo(item)
            if fp is None:
                continue
            prepared = reader.prepare(item) if data is None else prepare_data(item, data, caption, options)
            for name, value in (
                ("key", item.key),
                ("path", as_text(item.path)),
                ("path_bytes", path_bytes(item.path)),
                ("member", None if item.member is None else as_text(item.member)),
                ("prompt", None if prepared.prompt is None else as_text(prepared.prompt)),
                ("sha256", prepared.sha256),
                ("error", None if prepared.error is None else as_text(prepared.error)),
                ("size", item.size),
                ("mtime_ns", item.mtime_ns),
                ("fingerprint", fp),
            ):
                columns[name].append(value)
            pixels.append(prepared.pixels if prepared.pixels is not None else blank)
    finally:
        reader.close()
    out: dict[str, Any] = {name: np.array(values, dtype=object) for name, values in columns.items()}
    for name in ("size", "mtime_ns", "fingerprint"):
        out[name] = np.array(columns[name], dtype=np.int64)
    out["pixels"] = np.stack(pixels) if pixels else np.zeros((0, *IMAGE_SIZE_PIXELS), np.uint8)
    return out


def _text(value: Any) -> str | None:
    """A string column's value as Ray hands it over (None, or NaN where a column held only nulls)."""
    if value is None or isinstance(value, (float, np.floating)):
        return None
    return str(value)


class ScoreActor:
    """One model per actor (on its GPU when the pool asks for one); batches of prepared rows -> store rows."""

    def __init__(
        self, models_dir: str | None, device: str, dtype: str, batch_size: int, offline: bool | None, plan: RunPlan
    ) -> None:
        from ..scorer import ImageRewardScorer

        self.scorer = ImageRewardScorer.load(
            models_dir, device=device, dtype=dtype, batch_size=batch_size, offline=offline, progress=False
        )
        if model_id(self.scorer) != plan.model:
            raise RuntimeError(f"this node's model ({model_id(self.scorer)}) differs from the driver's ({plan.model})")
        self.plan = plan
        self.name = scorer_name()

    def __call__(self, batch: dict[str, Any]) -> Any:
        import torch

        n = len(batch["key"])
        meta = []
        for i in range(n):
            raw_path = batch["path_bytes"][i]
            real = os.fsdecode(bytes(raw_path)) if isinstance(raw_path, (bytes, bytearray)) else str(batch["path"][i])
            item = Item(
                key=str(batch["key"][i]),
                path=real,
                member=_text(batch["member"][i]),
                size=int(batch["size"][i]),
                mtime_ns=int(batch["mtime_ns"][i]),
            )
            fp, prompt, sha, error = (
                int(batch["fingerprint"][i]),
                _text(batch["prompt"][i]),
                _text(batch["sha256"][i]),
                _text(batch["error"][i]),
            )
            meta.append((item, fp, prompt, sha, error))
        good = np.array([m[4] is None for m in meta], dtype=bool)
        pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][good])).permute(0, 3, 1, 2)
        return rows_to_table(store_rows(self.scorer, meta, pixels, self.plan.model, self.plan.clean, self.name))


def _init_ray(address: str | None, num_cpus: int | None) -> Any:
    ray = deps.ray()
    if not ray.is_initialized():
        if address in (None, "local"):
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return ray


def _dataset(ray: Any, source: Any, plan: RunPlan) -> tuple[Any, str] | None:
    """Ray's reader for the source (None when nothing is left to score)."""
    if isinstance(source, ShardSource):
        # Shards on object storage are read through the filesystem the source resolved (its credentials and
        # options), and their rows get back the URLs that key them, as the local reader gives.
        local = [shard for shard in source.shards if not storage.is_url(shard)]
        parts = [ray.data.read_webdataset(local, decoder=None, include_paths=True)] if local else []
        for scheme, (fs, paths) in _by_filesystem([s for s in source.shards if storage.is_url(s)]).items():
            ds = ray.data.read_webdataset(paths, filesystem=fs, decoder=None, include_paths=True)
            parts.append(ds.map_batches(_with_scheme, fn_kwargs={"scheme": scheme}, batch_format="numpy"))
        return (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]), "webdataset"
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
        todo_rows = [{"path": item.path} for item in source.items() if plan.todo(item) is not None]
        return (ray.data.from_items(todo_rows), "parquet") if todo_rows else None
    if isinstance(source, FileSource):
        todo = [item.path for item in source.items() if plan.todo(item) is not None]
        if not todo:
            return None
        return ray.data.read_binary_files(todo, include_paths=True), "files"
    raise TypeError(f"no Ray reader for {type(source).__name__}")


def _listed(path: str, base: str) -> str:
    """A path from a Parquet list, relative ones taken from the list's folder (a URL for a list on object storage)."""
    if storage.is_url(path):
        return path
    if storage.is_url(base):
        return path if os.path.isabs(path) else storage.join(base, path)
    return os.path.join(base, path)


def _by_filesystem(urls: list[str]) -> dict[str, tuple[Any, list[str]]]:
    """Shard URLs grouped by scheme: (the filesystem, the paths on it) each."""
    groups: dict[str, tuple[Any, list[str]]] = {}
    for url in urls:
        where = storage.locate(url)
        groups.setdefault(where.scheme, (where.fs, []))[1].append(where.path)
    return groups


def _with_scheme(batch: dict[str, Any], *, scheme: str) -> dict[str, Any]:
    """Ray's webdataset rows name a shard by its path on the filesystem: give back the URL that keys its items."""
    batch["path"] = np.array([storage.canonical(scheme, str(p)) for p in batch["path"]], dtype=object)
    return batch


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
    rescore: bool = False,
    prompt: str | None = None,
    clean_prompts: bool = True,
    caption_field: str = "caption",
    hash_files: bool = False,
    num_cpus: int | None = None,
) -> RunSummary:
    """Score `source` into `store` with Ray Data (`address`: None or "local" for a local instance, or a cluster's)."""
    from ..scorer import ImageRewardScorer

    started = time.monotonic()
    results = store if isinstance(store, ResultStore) else ResultStore.create(store)
    summary = RunSummary(store=str(results.folder))
    with results.writer() as writer:
        # The driver loads the model once on the CPU for its identity (fingerprints), as the actors will on theirs.
        probe = ImageRewardScorer.load(models_dir, device="cpu", offline=offline, progress=False)
        plan = RunPlan(model_id(probe), clean_prompts, prompt, rescore, DoneIndex.empty())
        del probe
        plan.index = results.index()
        ray = _init_ray(address, num_cpus)
        found = _dataset(ray, source, plan)
        if found is not None:
            ds, kind = found
            options = ReadOptions(prompt, caption_field, True, hash_files)
            ds = ds.map_batches(
                prepare_batch, fn_kwargs={"kind": kind, "plan": plan, "options": options}, batch_format="numpy"
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
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_gpus=gpus_per_actor,
            )
            ds.write_parquet(str(results.folder / f".ray-{uuid.uuid4().hex[:8]}"))
            summary.scored, summary.failed = writer.adopt_staging()
        summary.total = summary.scored + summary.failed  # (the images skipped are not counted on Ray)
        summary.elapsed_s = time.monotonic() - started
        results.compact()
    return summary
