"""``python -m cald_speech.demo``: the ``make demo`` pipeline."""

import sys

from cald_speech.demo.pipeline import main

sys.exit(main())
