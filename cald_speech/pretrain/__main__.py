"""``python -m cald_speech.pretrain``: the starting model's CTC training."""

import sys

from cald_speech.pretrain.train import main

sys.exit(main())
