"""Saves the WebUI makes while a best-of-N job runs, held back until the job knows which images it keeps.

While the candidates are generated, every call of the WebUI's `modules.images.save_image` for the job's `p` (the
finished image, and everything saved inside the loop: "before face restoration / hires fix / colour correction",
masks, ADetailer's "before" copies) is recorded instead of written. The WebUI decides as usual whether to save
(its options, `p.save_samples()` with the interrupt and skip flags as they were at that moment), so the record holds
exactly what the WebUI would have written. At the end the calls of kept images are replayed in their original form,
with `p.iteration` and `p.batch_index` as they were, so filename patterns get each image's own numbers; discarded
images' calls are dropped (or their finished image goes to the discarded folder).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HIRES_SUFFIX = "-before-highres-fix"


@dataclass
class DeferredSave:
    index: int  # the generated image's global index
    iteration: int
    batch_index: int
    arguments: dict[str, Any]  # save_image's arguments by name

    @property
    def suffix(self) -> str:
        return str(self.arguments.get("suffix") or "")

    @property
    def is_final(self) -> bool:
        """The finished image (the call without a suffix), as opposed to intermediate copies and masks."""
        return not self.suffix


@dataclass
class SaveBuffer:
    saves: list[DeferredSave] = field(default_factory=list)
    _hires_seen: dict[int, int] = field(default_factory=dict)  # iteration -> intermediate saves counted so far

    def record(self, arguments: dict[str, Any], iteration: int, batch_index: int, batch_size: int) -> None:
        if arguments.get("suffix") == HIRES_SUFFIX:
            # Saved for the whole batch before the per-image loop, where p.batch_index is stale: count instead.
            batch_index = self._hires_seen.get(iteration, 0)
            self._hires_seen[iteration] = batch_index + 1
        image = arguments.get("image")
        if image is not None and hasattr(image, "copy"):
            arguments = {**arguments, "image": image.copy()}  # later hooks may draw on the same object
        index = iteration * batch_size + batch_index
        self.saves.append(DeferredSave(index, iteration, batch_index, arguments))

    def of(self, index: int) -> list[DeferredSave]:
        return [s for s in self.saves if s.index == index]

    def clear(self) -> None:
        self.saves.clear()
        self._hires_seen.clear()


def bind_arguments(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments by parameter name (the WebUI passes some positionally, some by name)."""
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return {**{f"#{i}": a for i, a in enumerate(args)}, **kwargs}
    return dict(bound.arguments)


def call_with(function: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    """Call `function` with arguments recorded by `bind_arguments`."""
    positional = [arguments[k] for k in sorted((k for k in arguments if k.startswith("#")), key=lambda k: int(k[1:]))]
    named = {k: v for k, v in arguments.items() if not k.startswith("#")}
    return function(*positional, **named)
