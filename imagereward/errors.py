"""Errors the user can act on.

Every failure a user can cause or fix (a bad file, a missing download, no network) is raised as an
``ImageRewardError`` with a message that says what is wrong and what to do. Front ends (the command line,
the WebUI hooks) print that message instead of a traceback.
"""

from __future__ import annotations


class ImageRewardError(Exception):
    """Base class: the message is meant for the user, as is."""


class CheckpointError(ImageRewardError):
    """A checkpoint file is unreadable, truncated, unsafe, or does not hold ImageReward weights."""


class ModelFileMissingError(ImageRewardError):
    """A model or tokenizer file is not on disk and may not be downloaded (offline mode)."""


class DownloadError(ImageRewardError):
    """A download failed or produced a file that does not match what the hub announced."""


class HubUnreachableError(ModelFileMissingError, DownloadError):
    """Model files are missing and the hub gives no answer at all (no network, refused, DNS, timeout). The message
    names every missing file, its path and URL, as in offline mode."""


class ImageInputError(ImageRewardError):
    """An image could not be read or has a shape/dtype the scorer cannot use."""


class PromptError(ImageRewardError):
    """A prompt list does not match the images (wrong count, wrong type)."""
