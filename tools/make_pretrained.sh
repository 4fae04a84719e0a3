#!/usr/bin/env bash
# Builds the offline "pretrained" starting model, in two steps:
#  1. a small wav2vec2 (hparams/models/tiny_wav2vec2.yaml) whose CNN front end is fitted
#     to log-mel filterbank features (python -m cald_speech.frontend); a frozen random
#     CNN makes the transformer above it learn about ten times slower;
#  2. character CTC training of that model (CNN frozen) on a synthetic corpus of SLURP
#     sentences, spoken by the voice identities that the LibriSpeech-format corpus uses
#     for training (its held-out dev and test voices are never heard).
# It stands in for a self-supervised checkpoint, which cannot be downloaded here; it is
# not one.
#   bash tools/make_pretrained.sh [OUT] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/pretrain}
EPOCHS=${2:-8}
PY=${PY:-.venv/bin/python}
bash tools/make_slurp_corpus.sh "$OUT/slurp_corpus"
if [ ! -f "$OUT/frontend/front_end_fit.json" ]; then   # a finished fit is kept
    $PY -m cald_speech.data.prepare slurp "$OUT/slurp_corpus" "$OUT/frontend_manifests" \
        --recording all --splits train devel
    $PY -m cald_speech.frontend --config hparams/models/tiny_wav2vec2.yaml \
        --train-csv "$OUT/frontend_manifests/train.csv" \
        --valid-csv "$OUT/frontend_manifests/devel.csv" \
        --out "$OUT/frontend" --steps 2000 --seed 7
fi
# 3,879 training utterances in batches of 8: 485 updates per epoch. WER stays near
# 100 % at this scale, so checkpoints are ranked by CER.
$PY recipes/LibriSpeech/ASR/train.py recipes/LibriSpeech/ASR/hparams/finetune.yaml \
    --data_folder "$OUT/slurp_corpus" --data_format slurp \
    --train_splits "[train]" --valid_splits "[devel]" --test_splits "[test]" \
    --text_column transcript --normalize_text true --seed 7 \
    --model_source "$OUT/frontend" \
    --output_folder "$OUT/run" --feature_cache_folder "$OUT/feature_cache" \
    --number_of_epochs "$EPOCHS" --batch_size 8 --lr_encoder 0.001 --lr_head 0.001 \
    --warmup_updates 300 --total_updates $((EPOCHS * 485)) --waypoint_every null \
    --sorting random --best_metric CER
echo "pretrained model: $OUT/run/model (the demo reads models/pretrained-offline: cp -r it there)"
