"""Which folders the ImageReward tab may read and write, and where a folder's results store goes.

A WebUI started with `--listen`, `--share`, `--ngrok` or `--server-name` can be opened from other machines. The WebUI
itself then refuses to install extensions unless it was started with `--enable-insecure-extension-access` (SD.Next:
`--insecure`); it records the decision in `cmd_opts.disable_extension_access`. The tab follows the same line: while
the UI is reachable from outside, it reads, writes, shows, copies and moves only inside the WebUI's output folders and
the folders the owner listed in our settings, so that nobody who can open the page can browse or move the server's
other files through it.

Stores: a folder inside the WebUI's output folders keeps its store inside it (`.imagereward-scores`, which moves
with the folder). Any other folder is only read: its store goes under `stores_dir`, named after the folder, unless
an earlier version already left a store in the folder, which is then kept in use.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ImageRewardError

STORE_NAME = ".imagereward-scores"
#: The flag that lifts the limit, as each host spells it.
LIFT_FLAG = "--enable-insecure-extension-access"
#: The WebUI's folder settings (A1111, Forge, reForge; SD.Next adds its control folder).
OUTPUT_OPTIONS = (
    "outdir_samples",
    "outdir_txt2img_samples",
    "outdir_img2img_samples",
    "outdir_extras_samples",
    "outdir_control_samples",
    "outdir_grids",
    "outdir_txt2img_grids",
    "outdir_img2img_grids",
    "outdir_save",
    "outdir_init_images",
)


class FolderRefused(ImageRewardError):
    """A folder outside what the tab may use while the WebUI is reachable from other machines."""


def reachable_from_outside(cmd_opts: Any) -> bool:
    """True when the WebUI refuses risky features: reachable from other machines and not explicitly made insecure."""
    decided = getattr(cmd_opts, "disable_extension_access", None)
    if isinstance(decided, bool):
        return decided
    exposed = any(getattr(cmd_opts, name, None) for name in ("share", "listen", "ngrok", "server_name"))
    insecure = any(getattr(cmd_opts, name, False) for name in ("enable_insecure_extension_access", "insecure"))
    return exposed and not insecure


def _resolved(path: str | os.PathLike[str], base: Path) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    return candidate.resolve()  # symlinks followed: a link inside an allowed folder cannot lead out of it


def _within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def split_folders(text: str) -> list[str]:
    """The setting's list: one folder per line, or separated by ';' (or the system's path separator)."""
    parts = re.split(r"[\n;" + re.escape(os.pathsep) + "]", text or "")
    return [part.strip() for part in parts if part.strip()]


@dataclass(frozen=True)
class FolderPolicy:
    restricted: bool
    output_roots: tuple[Path, ...]
    extra_roots: tuple[Path, ...]
    stores_dir: Path
    base: Path  # relative folder names are taken from here (the WebUI's folder)

    @classmethod
    def make(
        cls,
        *,
        restricted: bool,
        output_folders: Iterable[str | os.PathLike[str]],
        extra_folders: Iterable[str | os.PathLike[str]] = (),
        stores_dir: str | os.PathLike[str],
        base: str | os.PathLike[str] = ".",
    ) -> FolderPolicy:
        home = Path(base).expanduser().resolve()
        outputs = tuple(dict.fromkeys(_resolved(f, home) for f in output_folders if str(f).strip()))
        extras = tuple(dict.fromkeys(_resolved(f, home) for f in extra_folders if str(f).strip()))
        return cls(restricted, outputs, extras, _resolved(stores_dir, home), home)

    @property
    def roots(self) -> tuple[Path, ...]:
        return self.output_roots + self.extra_roots

    def shown_roots(self) -> list[Path]:
        """The allowed folders as a person reads them: those not inside another one."""
        return [root for root in self.roots if not any(other in root.parents for other in self.roots)]

    def _refusal(self, path: Path, what: str) -> FolderRefused:
        allowed = ", ".join(str(root) for root in self.shown_roots()) or "none"
        return FolderRefused(
            f"{path} is outside the folders the ImageReward tab may {what} while this WebUI is reachable from other "
            f"machines (--listen, --share): {allowed}. Add the folder in Settings → ImageReward, or start the WebUI "
            f"with {LIFT_FLAG} to lift this limit."
        )

    def permits(self, path: str | os.PathLike[str]) -> bool:
        return not self.restricted or _within(_resolved(path, self.base), self.roots)

    def folder(self, text: str | os.PathLike[str] | None, *, what: str = "use") -> Path:
        """The folder named by the user, checked; a sentence for anything the tab may not use."""
        name = str(text or "").strip()
        if not name:
            raise ImageRewardError("give a folder")
        path = _resolved(name, self.base)
        if not self.permits(path):
            raise self._refusal(path, what)
        if not path.is_dir():
            raise ImageRewardError(f"{path} is not a folder")
        return path

    def target(self, text: str | os.PathLike[str] | None) -> Path:
        """A copy or move target (it may not exist yet), checked like a folder."""
        name = str(text or "").strip()
        if not name:
            raise ImageRewardError("give a folder to copy or move the images into")
        path = _resolved(name, self.base)
        if not self.permits(path):
            raise self._refusal(path, "copy or move into")
        return path

    def store_of(self, folder: Path) -> Path:
        """Where `folder`'s results live: in it when it is one of the WebUI's outputs (or already holds a store),
        else in `stores_dir` under a name made from the folder's name and its full path."""
        inside = folder / STORE_NAME
        if _within(folder, self.output_roots) or inside.exists():
            return inside
        digest = hashlib.sha256(str(folder).encode("utf-8", "surrogatepass")).hexdigest()[:12]
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", folder.name or "root").strip("._") or "folder"
        return self.stores_dir / f"{label[:60]}-{digest}"


def webui_output_folders(opts: Any, data_path: str | os.PathLike[str]) -> list[str]:
    """The WebUI's output folders: every folder setting that is set, and the default `outputs` folder."""
    folders = [str(getattr(opts, name, "") or "").strip() for name in OUTPUT_OPTIONS]
    return [*(f for f in folders if f), str(Path(data_path) / "outputs")]
