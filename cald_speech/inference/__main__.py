"""``python -m cald_speech.inference`` runs ``cald-transcribe``."""

import sys

from cald_speech.inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
