#!/usr/bin/env python3
"""A CTC probe of frozen layers: a distilled student's, or a teacher's own.

    python train.py hparams/probe.yaml --data_folder DATA --upstream_source DIR
"""

from cald_speech.tasks.probe.recipe import main

if __name__ == "__main__":
    main()
