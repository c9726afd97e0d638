"""Run by the WebUI at every start: install only what is missing, pin nothing the WebUI pins.

torch, transformers, safetensors, Pillow and huggingface_hub come with every WebUI (A1111, Forge, reForge); this
checks that they are importable and installs a missing one with no version pin, so the WebUI's own pins win.
The WebUI skips this file with --skip-install. Outside the WebUI it only explains itself: use pip there.
"""

import importlib.util
import sys

REQUIRED = {  # import name -> pip name
    "torch": "torch",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "PIL": "pillow",
    "huggingface_hub": "huggingface_hub",
    "tqdm": "tqdm",
}

OUTSIDE_WEBUI = (
    "install.py is run by the Stable Diffusion WebUI when it loads this extension (it uses the WebUI's installer). "
    "Outside the WebUI, install the command line and library with pip instead, in a virtual environment: "
    "python3 -m venv .venv && .venv/bin/pip install . (see README.md)."
)


def missing_packages() -> list:
    return [pip_name for module, pip_name in REQUIRED.items() if importlib.util.find_spec(module) is None]


def main() -> int:
    missing = missing_packages()
    if importlib.util.find_spec("launch") is None:  # the WebUI puts its folder, holding launch.py, on the path
        print(OUTSIDE_WEBUI)
        if missing:
            print("Missing now: " + ", ".join(missing) + ".")
        return 1 if missing else 0
    if not missing:
        return 0
    import launch  # the WebUI's installer helpers

    for name in missing:
        launch.run_pip(f"install {name}", f"{name} for sd-webui-imagereward")
    return 0


status = main()
if status:
    sys.exit(status)
