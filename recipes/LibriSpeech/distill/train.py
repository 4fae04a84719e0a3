#!/usr/bin/env python3
"""Task-agnostic layer distillation: GenDistiller or the DistilHuBERT baseline.

    python train.py hparams/distill.yaml --data_folder DATA --teacher_source DIR
    python train.py hparams/distill.yaml ... --mode distilhubert
    python train.py hparams/distill.yaml ... --mixer ../../../../hparams/mixers/bimamba2.yaml
"""

from cald_speech.tasks.layers.recipe import main

if __name__ == "__main__":
    main()
