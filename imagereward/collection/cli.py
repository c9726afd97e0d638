"""Command line for collections: score into a results store incrementally, then list, export, copy or move.

    python -m imagereward.collection outputs -r --store outputs.scores            # score what is new
    python -m imagereward.collection --shards 'data/*.tar' --store data.scores --workers 2
    python -m imagereward.collection --store outputs.scores --min-score 1 --copy-to best   # no scoring: select
    python -m imagereward.collection --store outputs.scores --check        # parts, rows, damaged parts (--repair)
    python -m imagereward.collection outputs -r --store outputs.scores --scorer hpsv2.1   # adds the HPSv2.1 column
    python -m imagereward.collection --store outputs.scores --by hpsv2.1 --min-score 0.25 -o best.csv

`add_arguments` adds the collection options to a parser that already has the main command line's options (paths,
-p, -r, -f, -o, --copy-to, --clean-prompt, --models-dir, --scorer, --weights, --offline, --device, --dtype,
--batch-size, -q); `run`
takes the parsed arguments. `build_parser` makes a stand-alone parser with both.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ImageRewardError
from . import deps
from .store import DAMAGED, ResultStore

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_NOTHING_SCORED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
FORMATS = {".csv": "csv", ".json": "json", ".txt": "table"}


class UsageError(ImageRewardError):
    """A wrong option: one line, exit status 2, before anything is scored."""


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def model_threads(threads: int | None, workers: int) -> int | None:
    """The model's CPU threads: as asked, else cores minus decode workers when there are any (else torch's own)."""
    if threads is not None:
        return threads
    return max(1, (os.cpu_count() or 1) - workers) if workers > 0 else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("collections (a results store scored incrementally; needs pyarrow)")
    group.add_argument(
        "--store",
        metavar="DIR",
        help="the results store (a folder of Parquet files, created if new; or a URL: s3://bucket/store, gs://…)",
    )
    group.add_argument("--rescore", action="store_true", help="score every image again, even unchanged ones")
    group.add_argument(
        "--shards", action="append", metavar="GLOB", help="webdataset tar shards, local or s3://… (repeatable)"
    )
    group.add_argument(
        "--paths-file", metavar="FILE", help="a text file of image paths, one a line (UTF-8, or UTF-16/32 with a BOM)"
    )
    group.add_argument(
        "--parquet-in", metavar="FILE", help="a Parquet file of image paths (and prompts), local or s3://…"
    )
    group.add_argument("--path-column", default="path", help="--parquet-in's column of paths (default: path)")
    group.add_argument("--prompt-column", default="prompt", help="--parquet-in's column of prompts (default: prompt)")
    group.add_argument(
        "--caption-field", default="caption", help="the prompt's field in a shard's .json captions (default: caption)"
    )
    group.add_argument("--hash", action="store_true", help="record each image's SHA-256")
    group.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help=f"decode processes beside the model (default here: {default_workers()}; 0: decode in the main process)",
    )
    group.add_argument(
        "--threads",
        type=int,
        help="the model's CPU threads (default: cores minus --workers, at least 1, when there are workers)",
    )
    group.add_argument(
        "--by",
        metavar="SCORER",
        help="the score column that --min-score, --max-score, the listing, -o, --copy-to and --move-to go by: a "
        "scorer's name or label, e.g. hpsv2.1 or HPSv2.1 (default: the first scorer holding scores, in the order "
        "ImageReward, CLIP, Aesthetic, BLIP, PickScore, HPSv2.1, Ensemble)",
    )
    group.add_argument("--min-score", type=float, help="list, export, copy or move only images scoring at least this")
    group.add_argument("--max-score", type=float, help="… and at most this")
    group.add_argument("--prompt-contains", metavar="TEXT", help="… whose prompt contains TEXT (any case)")
    group.add_argument("--move-to", metavar="DIR", help="move the selected images there (never overwrites)")
    group.add_argument("--limit", type=int, default=20, help="rows in the printed table (default 20; -o writes all)")
    group.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS", help="run on a Ray cluster (default: a local one)"
    )
    group.add_argument("--ray-actors", type=int, default=1, help="scoring actors, one model each (default 1)")
    group.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per scoring actor (default 0: CPU)")
    group.add_argument(
        "--check",
        action="store_true",
        help="report the store's health (parts, rows, damaged parts, what killed runs left) and change nothing; "
        "exit 1 when a part is damaged",
    )
    group.add_argument(
        "--repair",
        action="store_true",
        help=f"set damaged parts aside into STORE/{DAMAGED}/ (moved, never deleted; their images are scored again "
        "on the next run), clear unfinished temporary parts, adopt what killed Ray runs finished",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imagereward.collection",
        description="Score a collection of images into a results store, only what is new on each run; then list, "
        "export, copy or move by score.",
    )
    parser.add_argument("paths", nargs="*", help="image files or folders")
    parser.add_argument("-p", "--prompt", help="the prompt for every image (default: infotext or caption)")
    parser.add_argument("-r", "--recursive", action="store_true", help="look into sub-folders")
    parser.add_argument("-f", "--format", choices=("table", "csv", "json"), help="output format")
    parser.add_argument("-o", "--output", help="write the selected rows to this file (.csv, .json)")
    parser.add_argument("--copy-to", help="copy the selected images there (never overwrites)")
    parser.add_argument("--clean-prompt", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--models-dir")
    parser.add_argument(
        "-s",
        "--scorer",
        action="append",
        metavar="NAME",
        help="scorer(s) filling the store, one column each (repeat, or name=a,b): imagereward (default), clip, "
        "aesthetic, blip, pickscore, hpsv2.1, ensemble; a scorer added to a store scores only its own column",
    )
    parser.add_argument("--weights", metavar="NAME=W,...", help="with --scorer ensemble: each member's weight")
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("-q", "--quiet", action="store_true")
    add_arguments(parser)
    return parser


#: Options that mean the collection path (the others: --workers, --limit, … only matter with it).
COLLECTION_ONLY = (
    "store",
    "rescore",
    "shards",
    "paths_file",
    "parquet_in",
    "hash",
    "min_score",
    "max_score",
    "prompt_contains",
    "move_to",
    "by",
    "ray",
    "check",
    "repair",
)


def wants_collection(args: argparse.Namespace) -> bool:
    """Whether the parsed arguments ask for the collection path (for the main command line's dispatch)."""
    values = (getattr(args, name, None) for name in COLLECTION_ONLY)
    return any(value is not None and value is not False for value in values)  # (--min-score 0 counts)


def _say(message: str) -> None:
    print(f"imagereward: {message}", file=sys.stderr)


def _check(args: argparse.Namespace) -> None:
    if not args.store:
        raise UsageError(
            "--shards, --paths-file, --parquet-in, --rescore, --hash, --min-score, --max-score, --prompt-contains, "
            "--move-to, --ray, --check and --repair work with a results store: add --store DIR"
        )
    if args.check or args.repair:
        others = [args.paths, args.shards, args.paths_file, args.parquet_in, args.output, args.move_to, args.rescore]
        if (args.check and args.repair) or any(others) or getattr(args, "copy_to", None):
            raise UsageError("give --check or --repair with --store alone (no inputs, -o, --copy-to or --move-to)")
    inputs = [bool(args.paths), bool(args.shards), bool(args.paths_file), bool(args.parquet_in)]
    if sum(inputs) > 1:
        raise UsageError("give one kind of input: paths, --shards, --paths-file or --parquet-in")
    for name in ("top_k", "threshold"):
        if getattr(args, name, None) is not None:
            raise UsageError("-k and -t rank within prompts; with --store, select with --min-score/--max-score")
    for name in ("min_score", "max_score"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number")
    if args.workers < 0 or args.batch_size < 1 or args.limit < 0 or args.ray_actors < 1 or args.ray_gpus < 0:
        raise UsageError("--workers, --limit must be at least 0; --batch-size, --ray-actors at least 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.copy_to and args.move_to:
        raise UsageError("give --copy-to or --move-to, not both")
    if getattr(args, "by", None):
        from .columns import UnknownColumnError, column_of

        try:
            column_of(args.by)
        except UnknownColumnError as exc:
            raise UsageError(f"--by {exc}") from None
    args.scorer_names = _scorer_names(args)
    from .storage import is_url

    if any(is_url(p) for p in args.paths or ()) or is_url(args.paths_file):
        raise UsageError(
            "images and path lists on object storage: give --shards s3://… or --parquet-in s3://… (paths and "
            "--paths-file are local)"
        )
    if args.models_dir and not Path(args.models_dir).expanduser().is_dir():
        raise UsageError(f"--models-dir {args.models_dir}: is not a folder")
    from ..engine import check_device  # one line before the model loads, as the main command line

    try:
        check_device(args.device)
    except ImageRewardError as exc:
        raise UsageError(f"--device {exc}") from None


def _scorer_names(args: argparse.Namespace) -> list[str]:
    """--scorer as the main command line reads it (default: imagereward); one line for an unknown name."""
    from ..cli import UsageError as MainUsageError
    from ..cli import scorer_names

    try:
        names = scorer_names(args)
        if "ensemble" in names:
            from ..ensemble import make_ensemble

            make_ensemble(names, args.weights)  # (bad weights or members: said before anything is loaded)
        return names
    except (MainUsageError, ImageRewardError) as exc:
        raise UsageError(str(exc)) from None


def make_source(args: argparse.Namespace) -> Any:
    """The source the arguments name, or None when there is nothing to score (select only)."""
    from . import sources

    if args.shards:
        return sources.ShardSource(args.shards)
    if args.paths_file:
        return sources.PathListSource(args.paths_file)
    if args.parquet_in:
        return sources.ParquetSource(args.parquet_in, path_column=args.path_column, prompt_column=args.prompt_column)
    if args.paths:
        exclude = [p for p in (args.store, getattr(args, "copy_to", None), args.move_to) if p]
        return sources.FileSource(args.paths, recursive=args.recursive, exclude=exclude)
    return None


def _score(args: argparse.Namespace, store: ResultStore, source: Any) -> Any:
    # What both ways of scoring take from the command line, once.
    common: dict[str, Any] = {
        "models_dir": args.models_dir,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "rescore": args.rescore,
        "scorers": args.scorer_names,
        "weights": args.weights,
        "prompt": args.prompt,
        "clean_prompts": args.clean_prompt,
        "caption_field": args.caption_field,
        "hash_files": args.hash,
    }
    if args.ray:
        from .ray_job import run_ray

        return run_ray(
            source, store, address=args.ray, offline=args.offline, actors=args.ray_actors,
            gpus_per_actor=args.ray_gpus, **common,
        )  # fmt: skip
    from .pipeline import score_collection

    bar = None
    desc = "/".join(args.scorer_names)
    if not args.quiet:
        from tqdm import tqdm

        def progress(p: Any) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=p.total, unit="img", desc=desc, file=sys.stderr, mininterval=0.5)
            bar.update(p.done - bar.n)

    try:
        return score_collection(
            source,
            store,
            offline=args.offline or None,
            workers=args.workers,
            torch_threads=model_threads(args.threads, args.workers),
            progress=None if args.quiet else progress,
            **common,
        )
    finally:
        if bar is not None:
            bar.close()


def _table(rows: Sequence[dict[str, Any]], by: str = "score") -> str:
    from ..scorers.specs import SCORERS

    decimals = next((spec.scale.decimals for spec in SCORERS.values() if spec.label == by), 3)
    lines = [f"{by[:12]:>12}  {'image':<60}  prompt"]
    for row in rows:
        score = "" if row["score"] is None else f"{row['score']:.{decimals}f}"
        image = row["key"] if len(row["key"]) <= 60 else "…" + row["key"][-59:]
        prompt = " ".join((row["prompt"] or row["error"] or "").split())  # one line
        lines.append(f"{score:>12}  {image:<60}  {prompt[:80]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Score (when inputs are given), then list or export, then copy or move. Returns the exit status."""
    from .columns import UnknownColumnError

    try:
        return _run(args)
    except (UsageError, UnknownColumnError) as exc:  # (--by a scorer the store holds no scores of)
        _say(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted; what was scored is in the store, and the next run goes on from there")
        return EXIT_INTERRUPTED
    except ImageRewardError as exc:
        _say(str(exc))
        return EXIT_NOTHING_SCORED


def _health(store: ResultStore, repair: bool) -> int:
    if repair:
        done, health = store.repair()
        for line in done:
            _say(line)
        if not done:
            _say("nothing to repair")
    else:
        health = store.check()
    for line in health.lines():
        print(line)
    return EXIT_OK if health.ok else EXIT_SOME_FAILED


def _run(args: argparse.Namespace) -> int:
    from .query import Filters, export, query, selected, sort_table
    from .sources import SourceError

    _check(args)
    deps.pyarrow()  # before anything is created: a missing pyarrow is one message saying what to install
    if args.check or args.repair:
        return _health(ResultStore.open_existing(args.store), args.repair)
    try:
        source = make_source(args)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    status = EXIT_OK
    # One store object throughout: a damaged part any reader meets is set aside once, and said once.
    store = ResultStore.create(args.store) if source is not None else ResultStore.open_existing(args.store)
    said: list[str] = []

    def say_store_problems() -> None:
        for problem in store.problems:
            if problem not in said:
                said.append(problem)
                _say(problem)

    if source is not None:
        summary = _score(args, store, source)
        for problem in summary.problems:
            said.append(problem)
            _say(problem)
        say_store_problems()
        if not args.quiet:
            columns = getattr(summary, "columns", {})
            per_column = f" ({', '.join(f'{c}: {n}' for c, n in columns.items())})" if len(columns) > 1 else ""
            _say(
                f"{summary.scored} scored{per_column}, {summary.failed} failed, {summary.skipped} already in the store "
                f"({summary.total} found) in {summary.elapsed_s:.1f} s -> {store.name}"
                + (" (interrupted)" if summary.interrupted else "")
            )
        if summary.interrupted:
            return EXIT_INTERRUPTED
        if summary.failed or summary.problems:
            status = EXIT_SOME_FAILED
    filters = Filters(args.min_score, args.max_score, args.prompt_contains, by=args.by)
    fmt = args.format or FORMATS.get(Path(args.output).suffix.lower(), "table") if args.output else args.format
    if args.output:
        if fmt not in ("csv", "json"):
            raise UsageError("-o writes .csv or .json (or give -f csv / -f json)")
        table = sort_table(selected(store, filters))
        say_store_problems()
        export(table, args.output, fmt)
        if not args.quiet:
            _say(f"{table.num_rows} rows written to {args.output}")
    elif not args.quiet or source is None:
        page = query(
            store,
            min_score=args.min_score,
            max_score=args.max_score,
            prompt_contains=args.prompt_contains,
            by=args.by,
            limit=args.limit,
        )
        say_store_problems()
        print(_table(page.rows, page.by))
        if page.total > len(page.rows):
            print(f"… {page.total - len(page.rows)} more (--limit N, or -o FILE.csv for all)")
    target = getattr(args, "copy_to", None) or args.move_to
    if target:
        from .actions import copy_selection, move_selection

        act = move_selection if args.move_to else copy_selection
        report = act(store, target, filters)
        say_store_problems()
        verb = "moved" if args.move_to else "copied"
        for problem in report.problems:
            _say(problem)
        _say(
            f"{report.done} {verb} to {target} ({report.renamed} under a new name, as theirs was taken), "
            f"{report.already_there} already there, {len(report.problems)} skipped"
        )
        if report.problems:
            status = max(status, EXIT_SOME_FAILED)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
