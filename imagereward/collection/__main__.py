import sys

from .cli import main

if __name__ == "__main__":  # decode workers started by "spawn" (Windows, macOS) import this module again
    sys.exit(main())
