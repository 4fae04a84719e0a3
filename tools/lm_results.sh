#!/usr/bin/env bash
# Greedy vs beam vs beam + 4-gram LM for the offline starting model, on LJ sentences that
# no model or LM has seen (the evaluation-only sentences, spoken by the held-out test
# voices of the demo's voice split); LM weight and word bonus chosen on a dev split whose
# sentences are left out of the LM; both beam-search engines. Resumable: each step is skipped when its output exists.
#   bash tools/lm_results.sh            # writes results/lm/ and docs/results/lm_*.json
# ROWS picks the rows (default: speechbrain_b16 flashlight_b16 flashlight_b128; the
# SpeechBrain engine is pure Python, by far the slowest); each row's files are copied
# to docs/results/ when it has run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/lm}
JOBS=${JOBS:-2}
MODEL=${MODEL:-models/pretrained-offline}
DATA=${CALD_SPEECH_DATA:-../shared/data}
ROWS=${ROWS:-speechbrain_b16 flashlight_b16 flashlight_b128}
for row in $ROWS; do
  case $row in
    speechbrain_b16|flashlight_b16|flashlight_b128) ;;
    *) echo "unknown row '$row' in ROWS: pick from speechbrain_b16 flashlight_b16 flashlight_b128" >&2
       exit 2 ;;
  esac
done
mkdir -p "$OUT"
# finished steps are skipped, so OUT must hold results of this MODEL only
digest=$(sha256sum "$MODEL/model.safetensors" | cut -c1-16)
if [ -f "$OUT/model.sha256" ]; then
  if [ "$(cat "$OUT/model.sha256")" != "$digest" ]; then
    echo "$OUT holds results of another model than $MODEL: pick a new OUT (OUT=results/lm_new)" >&2
    exit 2
  fi
elif compgen -G "$OUT/bench_*/decoding.json" > /dev/null; then
  echo "$OUT holds results of an unknown model: pick a new OUT (OUT=results/lm_new) or delete it" >&2
  exit 2
fi
echo "$digest" > "$OUT/model.sha256"
if [ ! -f "$OUT/corpus/.done" ]; then
  # seed 1, default voice options: the starting model's (and the demo's) voice split
  $PY -m cald_speech.data.synth librispeech --output-dir "$OUT/corpus" --train 0 --dev 100 --test 100 \
      --seed 1 --eval-texts --jobs "$JOBS" --quiet
  touch "$OUT/corpus/.done"
fi
[ -f "$OUT/manifests/test-clean.csv" ] || \
  $PY -m cald_speech.data.prepare librispeech "$OUT/corpus/LibriSpeech" --output-dir "$OUT/manifests" \
      --splits dev-clean test-clean
[ -f "$OUT/lj4.arpa" ] || \
  $PY -m cald_speech.lm.cli build "$DATA/text/ljspeech_sentences.tsv" --order 4 \
      --model "$MODEL" --exclude "$OUT/manifests/dev-clean.csv" --output "$OUT/lj4.arpa"
# SpeechBrain's prefix beam search (pure Python) and the compiled flashlight search
# (torchaudio's ctc_decoder; with the LM, a lexicon of the LM's words) at beam 16, and the
# compiled search at beam 128
run() {  # run NAME BEAM ENGINE
  [ -f "$OUT/bench_$1/decoding.json" ] || \
    $PY -m cald_speech.bench.cli decoding --model "$MODEL" --csv "$OUT/manifests/test-clean.csv" \
        --dev-csv "$OUT/manifests/dev-clean.csv" --lm "$OUT/lj4.arpa" --beam-size "$2" \
        --beam-engine "$3" --long-minutes "${LONG_MINUTES:-10}" --output-dir "$OUT/bench_$1"
}
for row in $ROWS; do
  case $row in
    speechbrain_b16) run speechbrain_b16 16 speechbrain ;;
    flashlight_b16) run flashlight_b16 16 flashlight ;;
    flashlight_b128) run flashlight_b128 128 flashlight ;;
  esac
done
mkdir -p docs/results
copy() {  # copy ROW_FILE DOCS_FILE, when the row has run
  if [ -f "$OUT/$1" ]; then cp "$OUT/$1" "docs/results/$2"; fi
}
copy bench_speechbrain_b16/decoding.json lm_starting_model.json
copy bench_speechbrain_b16/decoding.png lm_starting_model.png
for b in 16 128; do
  copy "bench_flashlight_b$b/decoding.json" "lm_starting_model_flashlight_b$b.json"
done
copy bench_flashlight_b16/decoding.png lm_starting_model_flashlight.png
cp "$OUT/lj4.arpa.json" docs/results/lm_lj4_arpa.json
