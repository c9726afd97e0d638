"""Optional dependencies, imported on first use with a message that says how to install them."""

from __future__ import annotations

from types import ModuleType

from ..errors import ImageRewardError


class MissingDependencyError(ImageRewardError):
    """An optional package (pyarrow, ray) that a collection feature needs is not installed."""


def pyarrow() -> ModuleType:
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise MissingDependencyError(
            "the results store needs pyarrow: pip install 'sd-webui-imagereward[collections]' (or pip install pyarrow)"
        ) from None
    return pyarrow


def ray() -> ModuleType:
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependencyError(
            "--ray needs Ray Data: pip install 'sd-webui-imagereward[ray]' (or pip install 'ray[data]' pyarrow)"
        ) from None
    return ray
