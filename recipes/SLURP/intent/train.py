#!/usr/bin/env python3
"""Spoken intent classification on SLURP: teacher fine-tuning or CALD student training.

    python train.py hparams/finetune.yaml --data_folder SLURP --model_source PRETRAINED
    python train.py hparams/cald.yaml --data_folder SLURP --mode hybrid --teacher_source DIR
"""

from cald_speech.tasks.intent.recipe import main

if __name__ == "__main__":
    main()
