#!/usr/bin/env bash
# The synthetic SLURP-format corpus that the offline starting model was trained on
# (train split) and that the intent results use (train/devel/test): SLURP sentences
# spoken by the LibriSpeech-format corpus's training voices; devel and test have their
# own held-out voices and sentences. Seeded: the same command gives the same audio; an up-to-date corpus is left as is.
#   bash tools/make_slurp_corpus.sh [OUT]      (default data/pretrain/slurp_corpus)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/pretrain/slurp_corpus}
PY=${PY:-.venv/bin/python}
# The LibriSpeech-format corpus's training voices (seed 1 assigns them).
VOICES=$($PY -c "from cald_speech.data.synth import voice_split
print(' '.join(voice_split(seed=1)['train-clean-100']))")
# shellcheck disable=SC2086
$PY -m cald_speech.data.synth slurp --output-dir "$OUT" --train 3000 --dev 150 --test 150 \
    --seed 7 --jobs "$(nproc)" --voices $VOICES --dev-voices 3 --test-voices 3 --quiet
