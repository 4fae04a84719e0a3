"""``python -m cald_speech.data.synth``: the ``cald-synth`` command line."""

import sys

from cald_speech.data.synth.cli import main

if __name__ == "__main__":
    sys.exit(main())
