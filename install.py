"""Run by the WebUI at every start: install only what is missing, pin nothing the WebUI pins.

torch, transformers, safetensors, Pillow and huggingface_hub come with every WebUI (A1111, Forge, reForge); this
checks that they are importable and installs a missing one with no version pin, so the WebUI's own pins win.
The WebUI skips this file with --skip-install.
"""

import importlib.util

REQUIRED = {  # import name -> pip name
    "torch": "torch",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "PIL": "pillow",
    "huggingface_hub": "huggingface_hub",
    "tqdm": "tqdm",
}


def missing_packages() -> list:
    return [pip_name for module, pip_name in REQUIRED.items() if importlib.util.find_spec(module) is None]


def main() -> None:
    missing = missing_packages()
    if not missing:
        return
    import launch  # the WebUI's installer helpers; only imported when something is missing

    for name in missing:
        launch.run_pip(f"install {name}", f"{name} for sd-webui-imagereward")


main()
