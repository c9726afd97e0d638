"""Command line: score and rank images on disk.

    imagereward outputs/txt2img-images                  # prompts from each PNG's WebUI infotext
    imagereward *.png --prompt "a cat" --top-k 3 --copy-to best/

Scores are comparable only between images of the same prompt, so ranks, top-k and thresholds apply within groups
of images that share a prompt. Originals are never moved, changed or deleted.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ImageRewardError
from .infotext import parse_infotext, read_image_infotext
from .selection import Mode, SelectionSettings, make_groups, select

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}


@dataclass
class Row:
    path: str
    prompt: str | None
    score: float | None = None
    rank: int | None = None
    group: int | None = None
    kept: bool = False
    error: str | None = None


def find_images(paths: Iterable[str], recursive: bool) -> tuple[list[Path], list[str]]:
    """Image files named or inside the named folders (sorted), and messages for paths that do not exist."""
    found: list[Path] = []
    problems: list[str] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{name}: no such file or folder")
    return list(dict.fromkeys(found)), problems


def prompt_of(path: Path, fixed: str | None) -> tuple[str | None, str | None]:
    """(prompt, error): the --prompt, else the positive prompt of the file's WebUI infotext."""
    if fixed is not None:
        return fixed, None
    try:
        text = read_image_infotext(path)
    except ImageRewardError as exc:
        return None, str(exc)
    if text is None:
        return None, "no prompt: the file has no WebUI generation parameters; pass --prompt"
    return parse_infotext(text).prompt, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagereward",
        description="Score images with ImageReward (human preference for text-to-image results) and rank them. "
        "Prompts come from --prompt or from each image's WebUI generation parameters.",
    )
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("-p", "--prompt", help="the prompt for every image (default: each PNG's own WebUI prompt)")
    parser.add_argument("-r", "--recursive", action="store_true", help="look into sub-folders")
    parser.add_argument("-f", "--format", choices=("table", "csv", "json"), default="table", help="output format")
    parser.add_argument("-o", "--output", help="write the results to this file instead of standard output")
    parser.add_argument("-k", "--top-k", type=int, help="keep the k best of each prompt")
    parser.add_argument("-t", "--threshold", type=float, help="keep images scoring at least this")
    parser.add_argument("--copy-to", help="copy the kept images into this folder (originals stay where they are)")
    parser.add_argument("--no-sort", action="store_true", help="list in file order instead of best first")
    parser.add_argument(
        "--clean-prompt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="strip WebUI syntax (weights, <lora:…> tags, prompt editing) before scoring (default: on)",
    )
    parser.add_argument(
        "--models-dir",
        help="where the model lives or is downloaded to (default: ~/.cache/imagereward or $IMAGEREWARD_HOME)",
    )
    parser.add_argument("--offline", action="store_true", help="never download; fail if model files are missing")
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, mps … (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="weights' precision (default: fp16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def settings_from(args: argparse.Namespace) -> SelectionSettings:
    if args.top_k is not None and args.top_k < 1:
        raise ImageRewardError("--top-k must be at least 1")
    if args.top_k is not None and args.threshold is not None:
        mode = Mode.TOP_K_ABOVE_THRESHOLD
    elif args.top_k is not None:
        mode = Mode.TOP_K
    elif args.threshold is not None:
        mode = Mode.THRESHOLD
    else:
        mode = Mode.SORT
    return SelectionSettings(
        mode=mode,
        k=args.top_k or 1,
        threshold=args.threshold if args.threshold is not None else 0.0,
        sort=not args.no_sort,
        keep_best_if_none=False,
    )


def score_rows(rows: list[Row], scorer, clean: bool, progress: bool) -> None:
    """Fill in scores, a chunk of files at a time; a file that cannot be read gets an error and the rest go on."""
    from .preprocess import open_image

    todo = [row for row in rows if row.error is None]
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="ImageReward", file=sys.stderr)
    chunk = max(1, scorer.batch_size) * 4
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        images, ready = [], []
        for row in part:
            try:
                images.append(open_image(row.path))
                ready.append(row)
            except ImageRewardError as exc:
                row.error = str(exc)
        if ready:
            scores = scorer.score([r.prompt for r in ready], images, clean_prompts=clean)
            for row, value in zip(ready, scores, strict=True):
                row.score = value
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()


def rank_rows(rows: list[Row], settings: SelectionSettings) -> tuple[list[Row], str | None]:
    """Rank within groups of the same prompt, apply top-k/threshold; returns rows in display order."""
    scored = [row for row in rows if row.score is not None]
    if not scored:
        return rows, None
    groups = make_groups(len(scored), 1, [row.prompt or "" for row in scored])
    selection = select([row.score for row in scored], groups, settings)  # type: ignore[misc]
    for i, row in enumerate(scored):
        row.rank, row.group = selection.rank[i], selection.group_of[i]
    for i in selection.kept:
        scored[i].kept = True
    order = list(selection.kept) + sorted(selection.discarded, key=lambda i: (selection.group_of[i], selection.rank[i]))
    if settings.sort is False:
        order = list(range(len(scored)))
    return [scored[i] for i in order] + [row for row in rows if row.score is None], selection.message


def copy_kept(rows: Sequence[Row], target: Path) -> list[str]:
    """Copy kept files into `target`; an existing file there is never overwritten (a numbered name is used)."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for row in rows:
        if not row.kept:
            continue
        source = Path(row.path)
        destination = target / source.name
        number = 1
        while destination.exists():
            destination = target / f"{source.stem}-{number}{source.suffix}"
            number += 1
        shutil.copy2(source, destination)
        copied.append(str(destination))
    return copied


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_path(path: str, width: int) -> str:
    """Paths lose their beginning, not the file name."""
    return path if len(path) <= width else "…" + path[-(width - 1) :]


def render(rows: Sequence[Row], fmt: str, filtering: bool) -> str:
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "score", "rank", "group", "kept", "prompt", "error"])
        for r in rows:
            score = "" if r.score is None else f"{r.score:.4f}"
            writer.writerow(
                [
                    r.path,
                    score,
                    r.rank or "",
                    "" if r.group is None else r.group,
                    int(r.kept),
                    r.prompt or "",
                    r.error or "",
                ]
            )
        return buffer.getvalue()
    lines = []
    header = (
        f"{'rank':>4}  {'score':>7}  {'kept':<4}  {'file':<40}  prompt"
        if filtering
        else f"{'rank':>4}  {'score':>7}  {'file':<40}  prompt"
    )
    lines.append(header)
    for r in rows:
        if r.score is None:
            lines.append(f"{'-':>4}  {'error':>7}  {_short_path(r.path, 40):<40}  {r.error}")
            continue
        score = "nan" if math.isnan(r.score) else f"{r.score:.3f}"
        kept = ("yes " if r.kept else "no  ") + "  " if filtering else ""
        lines.append(f"{r.rank:>4}  {score:>7}  {kept}{_short_path(r.path, 40):<40}  {_short(r.prompt, 60)}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
        if args.batch_size < 1:
            raise ImageRewardError("--batch-size must be at least 1")
        files, problems = find_images(args.paths, args.recursive)
        for problem in problems:
            print(f"imagereward: {problem}", file=sys.stderr)
        if not files:
            print("imagereward: no images found", file=sys.stderr)
            return 1
        rows = []
        for path in files:
            prompt, error = prompt_of(path, args.prompt)
            rows.append(Row(path=str(path), prompt=prompt, error=error))
        if all(row.error for row in rows):
            for row in rows:
                print(f"imagereward: {row.path}: {row.error}", file=sys.stderr)
            return 1

        from .scorer import ImageRewardScorer

        scorer = ImageRewardScorer.load(
            args.models_dir,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            offline=args.offline or None,
            progress=not args.quiet,
        )
        score_rows(rows, scorer, args.clean_prompt, progress=not args.quiet and sys.stderr.isatty())
        ordered, message = rank_rows(rows, settings)
        filtering = settings.mode is not Mode.SORT
        output = render(ordered, args.format, filtering)
        if args.output:
            Path(args.output).write_text(output, encoding="utf-8")
        else:
            sys.stdout.write(output)
        if message:
            print(f"imagereward: {message}", file=sys.stderr)
        if args.copy_to:
            copied = copy_kept(ordered, Path(args.copy_to))
            print(f"imagereward: copied {len(copied)} image(s) to {args.copy_to}", file=sys.stderr)
        failed = [row for row in rows if row.error]
        for row in failed:
            print(f"imagereward: {row.path}: {row.error}", file=sys.stderr)
        return 1 if failed else 0
    except ImageRewardError as exc:
        print(f"imagereward: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imagereward: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
