"""AUTOMATIC1111 / Forge / reForge entry point. All logic lives in the `imagereward` package beside this folder."""

from imagereward.webui import script as _imagereward_script

Script = _imagereward_script.ImageRewardScript

# Registered here, not at the package's import: the WebUI clears its callbacks and re-runs this file on "Reload UI",
# while the package stays imported.
_imagereward_script.register_callbacks()
