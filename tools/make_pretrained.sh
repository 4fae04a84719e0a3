#!/usr/bin/env bash
# Builds the offline "pretrained" starting model: a small wav2vec2
# (hparams/models/tiny_wav2vec2.yaml; CNN frozen at its seeded random init) trained
# with character CTC on a synthetic corpus of SLURP sentences, spoken by the voice
# identities that the LibriSpeech-format corpus uses for training (its held-out dev
# and test voices are never heard). It stands in for a self-supervised checkpoint,
# which cannot be downloaded here; it is not one.
#   bash tools/make_pretrained.sh [OUT] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/pretrain}
EPOCHS=${2:-12}
PY=${PY:-.venv/bin/python}
bash tools/make_slurp_corpus.sh "$OUT/slurp_corpus"
$PY recipes/LibriSpeech/ASR/train.py recipes/LibriSpeech/ASR/hparams/finetune.yaml \
    --data_folder "$OUT/slurp_corpus" --data_format slurp \
    --train_splits "[train]" --valid_splits "[devel]" --test_splits "[test]" \
    --text_column transcript --normalize_text true --seed 7 \
    --output_folder "$OUT/run" --feature_cache_folder "$OUT/feature_cache" \
    --number_of_epochs "$EPOCHS" --batch_size 8 --lr_encoder 0.001 --lr_head 0.001 \
    --warmup_updates 300 --total_updates $((EPOCHS * 375)) --waypoint_every null \
    --sorting random
echo "pretrained model: $OUT/run/model (the demo reads models/pretrained-offline: cp -r it there)"
