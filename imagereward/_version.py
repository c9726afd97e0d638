"""The package's version, in one place: `imagereward.__version__`, `imagereward --version` and the packaging
metadata (pyproject.toml reads it from here) all give this, installed or copied into a WebUI's extension folder."""

__version__ = "0.2.0"
