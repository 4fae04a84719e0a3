#!/usr/bin/env python3
"""CTC speech recognition: teacher fine-tuning or CALD student training.

    python train.py hparams/finetune.yaml --data_folder DATA
    python train.py hparams/cald.yaml --data_folder DATA --mode hybrid --teacher_source DIR
"""

from cald_speech.tasks.asr.recipe import main

if __name__ == "__main__":
    main()
