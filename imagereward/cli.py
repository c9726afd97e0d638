"""Command line: score and rank images on disk.

    imagereward outputs/txt2img-images                  # prompts from each PNG's WebUI infotext
    imagereward *.png --prompt "a cat" --top-k 3 --copy-to best/
    imagereward DIR --scorer pickscore --scorer aesthetic      # one column per scorer; ranks by the first

Scores are comparable only between images of the same prompt, so ranks, top-k and thresholds apply within groups
of images that share a prompt. Originals are never moved, changed or deleted, and no existing file is overwritten
except the ``-o`` file the user names. Everything that can be checked before the model loads (options, the ``-o``
and ``--copy-to`` targets, the device) is checked first, so a mistake costs no scoring time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import filecmp
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImageInputError, ImageRewardError
from .infotext import parse_infotext, read_image_infotext
from .selection import Mode, SelectionSettings, make_groups, select

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}
FORMAT_SUFFIXES = {".json": "json", ".csv": "csv", ".txt": "table"}

#: Exit statuses (also in --help).
EXIT_OK = 0  # every image found was scored
EXIT_SOME_FAILED = 1  # some images could not be scored (unreadable, no prompt); the others were, and are listed
EXIT_USAGE = 2  # a wrong option or target, or no images found; nothing was scored
EXIT_NOTHING_SCORED = 3  # the model could not be loaded, or no image could be scored
EXIT_INTERRUPTED = 130
#: The error of a row not scored because of Ctrl-C (in the table, CSV and JSON written after an interruption).
NOT_SCORED_INTERRUPTED = "not scored: interrupted (Ctrl-C) before its turn"

EPILOG = """\
examples:
  imagereward outputs/txt2img-images              rank a WebUI output folder by each image's own prompt
  imagereward -r outputs -k 1 --copy-to best      copy the best image of each prompt into best/
  imagereward *.jpg -p "a red fox in snow" -t 0   keep images scoring at least 0
  imagereward outputs -o scores.csv               write a CSV (the format follows the suffix: .csv .json .txt)
  imagereward outputs --scorer pickscore --scorer aesthetic
                                                  two scorers, one column each; ranks, -k and -t use the first
  imagereward outputs --scorer ensemble --weights imagereward=1,pickscore=2
                                                  rank by the weighted mean of standardised scores
  imagereward photos --scorer aesthetic           the aesthetic score needs no prompt

scorers (--scorer, repeatable; default imagereward):
  imagereward  human preference given the prompt (ImageReward v1.0)
  pickscore    human preference given the prompt (PickScore v1, CLIP ViT-H/14)
  hpsv2.1      human preference given the prompt (HPSv2.1, OpenCLIP ViT-H/14)
  clip         prompt-image agreement (cosine of OpenAI CLIP ViT-L/14 embeddings)
  blip         prompt-image agreement (cosine of BLIP features)
  aesthetic    how good the image looks, without the prompt (LAION aesthetic predictor)
  ensemble     weighted mean of the other scorers named (default: imagereward, pickscore, hpsv2.1), each
               standardised first; --weights name=w,... sets the weights (default 1 each)

what a score means:
  ImageReward predicts how much people would prefer an image for its prompt. Scores are normalised like a
  standard normal variable: 0 is the average of the model's training images, most scores lie between -2 and +2.
  Scores are comparable only between images of the same prompt, so ranks, -k and -t apply within each prompt.

exit status:
  0    every image found was scored
  1    some images could not be scored (unreadable, no prompt); the others were scored and listed
  2    usage error: a wrong option, an unusable -o or --copy-to target, or no images found
  3    nothing scored: the model could not be loaded, or no image could be scored
  130  interrupted: the images scored by then are listed (or written to -o), the others marked "not scored:
       interrupted"; nothing is copied
"""


class UsageError(ImageRewardError):
    """A wrong option or target: reported in one line, exit status 2, before anything is scored."""


@dataclass
class Row:
    path: str
    prompt: str | None
    score: float | None = None
    rank: int | None = None
    group: int | None = None
    kept: bool = False
    error: str | None = None
    truncated: bool = False
    scores: dict[str, float] = field(default_factory=dict)  # every scorer's value; `score` is the ranking one's


# ------------------------------------------------------------------------------------------------ text for output


def shown(text: str | None) -> str:
    """Text safe to print and to write as UTF-8: bytes that are not UTF-8 (a file name from another system, kept by
    Python as lone surrogates) appear as backslash escapes such as \\xff, instead of crashing the output."""
    if text is None:
        return ""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _say(message: str) -> None:
    print(f"imagereward: {shown(message)}", file=sys.stderr)


def _without_path(message: str, path: str) -> str:
    """An error for a row, without the file name the row already shows."""
    for prefix in (f"{path}: ", f"{shown(path)}: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


# ------------------------------------------------------------------------------------------------------- finding


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
    except (ValueError, OSError):
        return False
    return True


def find_images(paths: Iterable[str], recursive: bool, exclude: Path | None = None) -> tuple[list[Path], list[str]]:
    """Image files named or inside the named folders (sorted), and messages for paths that do not exist.

    Files inside `exclude` (the --copy-to folder) are left out of folder scans, so a later run over the same folder
    does not score and copy earlier copies again.
    """
    found: list[Path] = []
    problems: list[str] = []
    excluded = exclude.resolve() if exclude is not None and exclude.exists() else None
    for name in paths:
        path = Path(name)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(
                sorted(
                    p
                    for p in path.glob(pattern)
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not _inside(p, excluded)
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{name}: no such file or folder")
    return list(dict.fromkeys(found)), problems


def prompt_of(path: Path, fixed: str | None, needed: bool = True) -> tuple[str | None, str | None]:
    """(prompt, error): the --prompt, else the positive prompt of the file's WebUI infotext. When no scorer reads
    the prompt (`needed` False), a file without one is no error; its prompt, if any, still groups the ranking.

    Bytes of an argument that are not UTF-8 (kept by Python as lone surrogates, which the tokenizer refuses) are
    read as backslash escapes, as in the output."""
    if fixed is not None:
        return shown(fixed), None
    try:
        text = read_image_infotext(path)
    except ImageRewardError as exc:
        return None, _without_path(str(exc), str(path))
    if text is None:
        if not needed:
            return None, None
        return None, "no prompt: the file has no WebUI generation parameters; pass --prompt"
    return parse_infotext(text).prompt, None


# ------------------------------------------------------------------------------------------------------- options


def _version() -> str:
    """From the package itself, not from pip's records: a copy in a WebUI's extension folder has none."""
    from ._version import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagereward",
        description="Score images with ImageReward (human preference for text-to-image results) and rank them. "
        "Prompts come from --prompt or from each image's WebUI generation parameters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", help="image files or folders; optional with --store")
    parser.add_argument("-p", "--prompt", help="the prompt for every image (default: each image's own WebUI prompt)")
    parser.add_argument("-r", "--recursive", action="store_true", help="look into sub-folders")
    parser.add_argument(
        "-f", "--format", choices=("table", "csv", "json"), help="output format (default: from -o's suffix, else table)"
    )
    parser.add_argument("-o", "--output", help="write the results to this file instead of standard output")
    parser.add_argument("-k", "--top-k", type=int, help="keep the k best of each prompt")
    parser.add_argument("-t", "--threshold", type=float, help="keep images scoring at least this")
    parser.add_argument(
        "--keep-best-if-none",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with -t: when no image of a prompt reaches the threshold, keep its best one, as the WebUI does "
        "(default: on; --no-keep-best-if-none keeps none)",
    )
    parser.add_argument(
        "--copy-to",
        help="copy the kept images into this folder (originals stay where they are; an identical file already "
        "there is skipped, a different one is never overwritten)",
    )
    parser.add_argument("--no-sort", action="store_true", help="list in file order instead of best first")
    parser.add_argument(
        "--clean-prompt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="strip WebUI syntax (weights, <lora:…> tags, prompt editing) before scoring (default: on)",
    )
    parser.add_argument(
        "--models-dir",
        help="where the model lives or is downloaded to (default: ~/.cache/imagereward or $IMAGEREWARD_HOME); "
        "it must exist",
    )
    parser.add_argument(
        "-s",
        "--scorer",
        action="append",
        metavar="NAME",
        help="scorer to use; repeat for several (one column each, ranks follow the first): imagereward (default), "
        "pickscore, hpsv2.1, clip, blip, aesthetic, ensemble",
    )
    parser.add_argument(
        "--weights",
        metavar="NAME=W,...",
        help="with --scorer ensemble: each member's weight, e.g. imagereward=1,pickscore=2 (default 1 each)",
    )
    parser.add_argument("--offline", action="store_true", help="never download; fail if model files are missing")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="weights' precision (default: fp16 on a GPU, fp32 on the CPU)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on standard error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    from .collection.cli import add_arguments as add_collection_arguments

    add_collection_arguments(parser)  # imports neither pyarrow nor ray
    return parser


def settings_from(args: argparse.Namespace) -> SelectionSettings:
    if args.top_k is not None and args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise UsageError("--threshold must be a finite number")
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
        keep_best_if_none=args.keep_best_if_none,
    )


def output_format(args: argparse.Namespace) -> str:
    """-f when given, else the -o file's suffix (.json, .csv, .txt), else a table."""
    if args.format:
        return args.format
    if args.output:
        suffix = Path(args.output).suffix.lower()
        if suffix in FORMAT_SUFFIXES:
            return FORMAT_SUFFIXES[suffix]
    return "table"


def check_device(name: str) -> None:
    """`engine.check_device` as a usage error of this command."""
    from .engine import check_device as check

    try:
        check(name)
    except ImageRewardError as exc:
        raise UsageError(f"--device {exc}") from None


def check_output_target(output: str, inputs: Sequence[Path]) -> None:
    """-o must be a file in an existing, writable folder, and none of the images."""
    target = Path(output)
    if target.is_dir():
        raise UsageError(f"-o {output}: is a folder; name a file")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"-o {output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"-o {output}: the folder {parent} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"-o {output}: the file is read-only")
    if target.exists() and any(_same_file(target, path) for path in inputs):
        raise UsageError(f"-o {output}: is one of the images to score; name another file")


def check_copy_target(folder: str) -> None:
    """--copy-to must be a writable folder, or a new one in an existing folder."""
    target = Path(folder)
    if target.is_symlink() and not target.exists():
        raise UsageError(f"--copy-to {folder}: is a broken symbolic link")
    if target.exists() and not target.is_dir():
        raise UsageError(f"--copy-to {folder}: is a file, not a folder")
    existing = target if target.exists() else target.parent
    if not existing.is_dir():
        raise UsageError(f"--copy-to {folder}: its parent folder {existing} does not exist")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--copy-to {folder}: {existing} is not writable")


def check_models_dir(folder: str | None) -> None:
    """A mistyped --models-dir is an error, not a reason to download 1.8 GB into a new folder."""
    if folder is None:
        return
    path = Path(folder).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise UsageError(f"--models-dir {folder}: {what} (create it first to download the model there)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------------- scoring


def scorer_names(args: argparse.Namespace) -> list[str]:
    """The canonical scorer names asked for (default: imagereward), in order; unknown names are a usage error."""
    from .scorers.specs import ENSEMBLE, SCORERS, canonical_name

    names: list[str] = []
    for given in args.scorer or ["imagereward"]:
        for part in given.split(","):
            if not part.strip():
                continue
            name = canonical_name(part)
            if name is None:
                raise UsageError(f"--scorer {part.strip()}: unknown; choose from {', '.join([*SCORERS, ENSEMBLE])}")
            if name not in names:
                names.append(name)
    if not names:
        raise UsageError("--scorer needs a name")
    if args.weights and ENSEMBLE not in names:
        raise UsageError("--weights only applies with --scorer ensemble")
    return names


def prompt_needed(names: Sequence[str], weights: str | None) -> bool:
    """Whether any scorer asked for (ensemble members included) reads the prompt."""
    from .ensemble import make_ensemble
    from .scorers.specs import ENSEMBLE, SCORERS

    members = list(names)
    if ENSEMBLE in names:
        members += make_ensemble(names, weights).members
    return any(SCORERS[n].needs_prompt for n in members if n != ENSEMBLE)


def _load_scorer(args: argparse.Namespace, names: Sequence[str]) -> Any:
    from .scorers.registry import load_scorers

    if not args.quiet:
        where = args.models_dir or "the model cache"
        _say(f"loading {', '.join(names)} from {where} (a few seconds; the first run downloads the model)…")
    start = time.perf_counter()
    scorer = load_scorers(
        names,
        args.models_dir,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        offline=args.offline or None,
        progress=not args.quiet,
        weights=args.weights,
    )
    if not args.quiet:
        what = "model" if len(scorer.scorers) == 1 else f"{len(scorer.scorers)} models"
        _say(f"{what} loaded on {scorer.device} in {time.perf_counter() - start:.1f} s")
    return scorer


def fill_scores(rows: list[Row], scorer: Any, clean: bool, progress: bool) -> None:
    """Fill in scores, a batch of files at a time; a file that cannot be read gets an error and the rest go on."""
    from .preprocess import open_image

    todo = [row for row in rows if row.error is None]
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="ImageReward", file=sys.stderr, mininterval=0.2)
    step = max(1, scorer.batch_size)
    try:
        for start in range(0, len(todo), step):
            part = todo[start : start + step]
            images, ready = [], []
            for row in part:
                try:
                    images.append(open_image(row.path))
                    ready.append(row)
                except ImageRewardError as exc:
                    row.error = _without_path(str(exc), row.path)
            _score_part(ready, images, scorer, clean)
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()


def _score_part(rows: list[Row], images: list[Any], scorer: Any, clean: bool) -> None:
    """Score a batch; when one image of it is refused, score the others one by one so only that one fails."""
    if not rows:
        return
    try:
        prompts = [r.prompt or "" for r in rows] if scorer.needs_prompt else None
        table = scorer.score(prompts, images, clean_prompts=clean)
    except ImageInputError:
        if len(rows) == 1:
            raise
        for row, image in zip(rows, images, strict=True):
            try:
                _score_part([row], [image], scorer, clean)
            except ImageInputError as exc:
                row.error = _without_path(str(exc), row.path)
        return
    ranking = scorer.names[0]
    for i, row in enumerate(rows):
        row.scores = {name: values[i] for name, values in table.items()}
        row.score = row.scores[ranking]


def mark_truncated(rows: list[Row], scorer: Any, clean: bool) -> int:
    """Flag rows whose prompt is longer than the model reads; returns how many prompts (distinct) that is."""
    scored = [row for row in rows if row.score is not None and row.prompt is not None]
    prompts = list(dict.fromkeys(row.prompt for row in scored if row.prompt is not None))
    if not prompts or not scorer.needs_prompt:
        return 0
    cut = {p for p, flag in zip(prompts, scorer.truncated(prompts, clean=clean), strict=True) if flag}
    for row in scored:
        row.truncated = row.prompt in cut
    return len(cut)


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


# ------------------------------------------------------------------------------------------------------- copying


@dataclass
class CopyReport:
    copied: list[str]
    already_there: list[str]
    failed: list[str]


def _copy_new(source: Path, destination: Path) -> None:
    """Copy into a file that must not exist yet: exclusive creation never writes into an existing file, nor
    through a symbolic link (even a dangling one) to somewhere else. A half-written copy of ours is removed."""
    with source.open("rb") as src, destination.open("xb") as dst:
        try:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        except BaseException:
            dst.close()
            destination.unlink(missing_ok=True)
            raise
    with contextlib.suppress(OSError):  # times and mode are a courtesy
        shutil.copystat(source, destination)


def copy_kept(rows: Sequence[Row], target: Path) -> CopyReport:
    """Copy kept files into `target`. A file there with the same content is left as it is (and counted as already
    there); any other existing name, file or link, is never overwritten: a numbered name is used instead."""
    target.mkdir(parents=False, exist_ok=True)
    report = CopyReport([], [], [])
    for row in rows:
        if not row.kept:
            continue
        source = Path(row.path)
        for number in range(10000):
            destination = target / (source.name if number == 0 else f"{source.stem}-{number}{source.suffix}")
            if os.path.lexists(destination):
                if _same_content(source, destination):
                    report.already_there.append(str(destination))
                    break
                continue
            try:
                _copy_new(source, destination)
            except FileExistsError:
                continue  # appeared meanwhile: try the next name
            except OSError as exc:
                report.failed.append(f"{row.path}: could not copy to {destination}: {exc.strerror or exc}")
                break
            report.copied.append(str(destination))
            break
    return report


def _same_content(source: Path, existing: Path) -> bool:
    if existing.is_symlink() or not existing.is_file():
        return False
    try:
        return filecmp.cmp(source, existing, shallow=False)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------------ rendering


def _short(text: str | None, width: int | None) -> str:
    text = shown(text).replace("\n", " ")
    if width is None or len(text) <= width:
        return text
    return text[: max(1, width - 1)] + "…"


def _short_path(path: str, width: int) -> str:
    """Paths lose their beginning, not the file name."""
    return path if len(path) <= width else "…" + path[-(width - 1) :]


def _record(row: Row) -> dict[str, Any]:
    return {
        "path": shown(row.path),
        "prompt": None if row.prompt is None else shown(row.prompt),
        "score": row.score,
        "rank": row.rank,
        "group": row.group,
        "kept": row.kept,
        "error": None if row.error is None else shown(row.error),
        "truncated": row.truncated,
        "scores": dict(row.scores),
    }


def _value(value: float | None, decimals: int) -> str:
    if value is None:
        return ""
    return "nan" if math.isnan(value) else f"{value:.{decimals}f}"


def render(
    rows: Sequence[Row], fmt: str, filtering: bool, width: int | None = None, columns: Sequence[str] = ()
) -> str:
    """The results as a table, CSV or JSON. `width`: the terminal's columns (the table fits them), or None.
    `columns`: the scorers shown one column each (several scorers, or another than ImageReward); CSV appends one
    column per scorer, named after it; the table shows them in place of the single score column."""
    if fmt == "json":
        return json.dumps([_record(r) for r in rows], indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "score", "rank", "group", "kept", "prompt", "error", "truncated", *columns])
        for r in rows:
            score = "" if r.score is None else f"{r.score:.4f}"
            group = "" if r.group is None else r.group
            prompt, error = shown(r.prompt), shown(r.error)
            extra = [_value(r.scores.get(c), 4) for c in columns]
            writer.writerow(
                [shown(r.path), score, r.rank or "", group, int(r.kept), prompt, error, int(r.truncated), *extra]
            )
        return buffer.getvalue()
    heads = [("score", 7, 3, None)]
    if columns:
        from .scorers.specs import ENSEMBLE, SCORERS

        heads = []
        for name in columns:
            label = "ensemble" if name == ENSEMBLE else SCORERS[name].label
            decimals = 3 if name == ENSEMBLE else SCORERS[name].scale.decimals
            heads.append((label, max(7, len(label)), decimals, name))
    score_width = sum(w + 2 for _, w, _, _ in heads) - 2
    paths = [shown(r.path) for r in rows]
    file_width = min(40, max([4, *(len(p) for p in paths)]))
    rest = None
    if width is not None:  # the prompt gets at least 20 columns, the file name what is left (12 to 40)
        available = width - (4 + 2 + score_width + 2 + (4 + 2 if filtering else 0)) - 2 - 1
        file_width = max(12, min(file_width, available - 20))
        rest = max(10, available - file_width)
    kept_head = f"{'kept':<4}  " if filtering else ""
    score_head = "  ".join(f"{label:>{w}}" for label, w, _, _ in heads)
    lines = [f"{'rank':>4}  {score_head}  {kept_head}{'file':<{file_width}}  prompt"]
    for r, path in zip(rows, paths, strict=True):
        name = f"{_short_path(path, file_width):<{file_width}}"
        if r.score is None:
            blank = f"{'':<4}  " if filtering else ""
            lines.append(f"{'-':>4}  {'error':>{score_width}}  {blank}{name}  {_short(r.error, rest)}")
            continue
        values = "  ".join(
            f"{_value(r.score if key is None else r.scores.get(key), decimals):>{w}}" for _, w, decimals, key in heads
        )
        kept = f"{'yes' if r.kept else 'no':<4}  " if filtering else ""
        prompt = _short(r.prompt, rest) + (" [cut]" if r.truncated else "")
        lines.append(f"{r.rank:>4}  {values}  {kept}{name}  {prompt}")
    return "\n".join(lines) + "\n"


def write_output(text: str, output: str) -> None:
    """Write the -o file through a temporary file beside it, so a failure never leaves it half-written."""
    target = Path(output)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("x", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise UsageError(f"-o {output}: could not write it: {exc.strerror or exc}") from None


def _terminal_width() -> int | None:
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((100, 24)).columns


# ---------------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .collection.cli import run as run_collection
    from .collection.cli import wants_collection

    if wants_collection(args):
        return run_collection(args)
    if not args.paths:
        _say("error: give image files or folders (or --store DIR for a results store)")
        return EXIT_USAGE
    started = time.perf_counter()
    try:
        return _run(args, started)
    except UsageError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except ImageRewardError as exc:
        _say(f"error: {exc}")
        return EXIT_NOTHING_SCORED
    except KeyboardInterrupt:
        _say(getattr(args, "interrupted_note", "interrupted: nothing was scored, written or copied"))
        return EXIT_INTERRUPTED


def _write_partial(
    args: argparse.Namespace, rows: list[Row], fmt: str, settings: SelectionSettings, scorer: Any
) -> int:
    """After Ctrl-C during scoring: the rows scored so far are ranked and written as usual (to -o or standard
    output), the others carry `NOT_SCORED_INTERRUPTED`; nothing is copied. A second Ctrl-C stops this too."""
    done = sum(row.score is not None for row in rows)
    for row in rows:
        if row.score is None and row.error is None:
            row.error = NOT_SCORED_INTERRUPTED
    if not done:
        _say("interrupted: no image was scored yet; nothing written or copied")
        return EXIT_INTERRUPTED
    ordered, _ = rank_rows(rows, settings)
    columns = [] if scorer.names == ["imagereward"] else scorer.names
    output = render(ordered, fmt, settings.mode is not Mode.SORT, None if args.output else _terminal_width(), columns)
    if args.output:
        write_output(output, args.output)
    else:
        sys.stdout.write(output)
        sys.stdout.flush()
    where = f"written to {args.output}" if args.output else "listed"
    _say(
        f"interrupted: the results are partial: {done} of {len(rows)} images scored and {where}; the other "
        f'{len(rows) - done} are marked "{NOT_SCORED_INTERRUPTED}"; ranks compare the scored images only'
        + ("; nothing was copied" if args.copy_to else "")
    )
    return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, started: float) -> int:
    settings = settings_from(args)
    fmt = output_format(args)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    files, problems = find_images(args.paths, args.recursive, Path(args.copy_to) if args.copy_to else None)
    for problem in problems:
        _say(problem)
    if not files:
        raise UsageError("no images found")
    if args.output:
        check_output_target(args.output, files)
    if args.copy_to:
        check_copy_target(args.copy_to)
    check_models_dir(args.models_dir)
    check_device(args.device)
    names = scorer_names(args)
    needed = prompt_needed(names, args.weights)

    rows = []
    for path in files:
        prompt, error = prompt_of(path, args.prompt, needed)
        rows.append(Row(path=str(path), prompt=prompt, error=error))
    if all(row.error for row in rows):
        for row in rows:
            _say(f"{row.path}: {row.error}")
        _say("no image could be scored")
        return EXIT_NOTHING_SCORED

    scorer = _load_scorer(args, names)
    try:
        fill_scores(rows, scorer, args.clean_prompt, progress=not args.quiet and sys.stderr.isatty())
    except KeyboardInterrupt:
        return _write_partial(args, rows, fmt, settings, scorer)
    args.interrupted_note = "interrupted after scoring: nothing was written or copied"
    cut = mark_truncated(rows, scorer, args.clean_prompt)
    ordered, message = rank_rows(rows, settings)
    filtering = settings.mode is not Mode.SORT
    columns = [] if scorer.names == ["imagereward"] else scorer.names
    output = render(ordered, fmt, filtering, None if args.output else _terminal_width(), columns)
    if args.output:
        write_output(output, args.output)
    else:
        sys.stdout.write(output)
        sys.stdout.flush()
    args.interrupted_note = "interrupted after the results were written" + (
        "; some kept images were not copied" if args.copy_to else ""
    )
    failed = [row for row in rows if row.error]
    if args.output:  # the errors are in the file; say which files on the terminal too, once each
        for row in failed:
            _say(f"{row.path}: {row.error}")
    if message and not args.quiet:
        _say(message)
    if cut and not args.quiet:
        limit = (
            "the model reads (33 word pieces)"
            if scorer.names == ["imagereward"]
            else "a model reads (ImageReward and BLIP: 33 word pieces; the CLIP-based scorers: 75 tokens)"
        )
        _say(
            f"{cut} prompt(s) are longer than {limit}: only their beginning was scored "
            '(marked [cut] in the table, "truncated" in CSV and JSON)'
        )
    copy_note = ""
    if args.copy_to:
        report = copy_kept(ordered, Path(args.copy_to))
        for problem in report.failed:
            _say(problem)
        copy_note = f", {len(report.copied)} copied to {args.copy_to}"
        if report.already_there:
            copy_note += f" ({len(report.already_there)} already there with the same content, skipped)"
        if report.failed:
            copy_note += f", {len(report.failed)} could not be copied"
    scored = [row for row in rows if row.score is not None]
    if not args.quiet:
        kept = sum(row.kept for row in scored)
        _say(
            f"{len(scored)} scored, {kept} kept, {len(failed)} failed{copy_note} "
            f"in {time.perf_counter() - started:.1f} s"
        )
    if not scored:
        return EXIT_NOTHING_SCORED
    if failed or (args.copy_to and report.failed):
        return EXIT_SOME_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
