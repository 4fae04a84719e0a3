"""The main job behind ``make demo``: each stage resumable, skipped when up to date.

Stages:

1. ``corpus``: synthesize a LibriSpeech-format corpus offline (held-out test voices);
2. ``manifests``: prepare its SpeechBrain CSV manifests and a character tokenizer.

Sizes live in ``hparams/demo.yaml`` (``--scale small`` or ``full``).

    python -m cald_speech.demo --scale small [--out data/demo] [--jobs 2]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from cald_speech.errors import CaldError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "hparams" / "demo.yaml"


def load_scale(scale, config=DEFAULT_CONFIG):
    """The settings of one scale from the demo config."""
    with open(config, encoding="utf-8") as f:
        scales = yaml.safe_load(f)
    if scale not in scales:
        raise CaldError(f"{config}: unknown scale '{scale}'; choose one of {sorted(scales)}")
    return scales[scale]


def stage_corpus(cfg, out, jobs):
    """Synthesizes the LibriSpeech-format corpus (a no-op when it is up to date)."""
    from cald_speech.data.synth import format_summary, synthesize_librispeech

    summary = synthesize_librispeech(str(out / "corpus"), jobs=jobs, **cfg["corpus"])
    print(format_summary(summary))
    print(summary["heldout_statement"])
    return summary


def stage_manifests(cfg, out):
    """Writes the CSV manifests and the tokenizer."""
    from cald_speech.data.librispeech import prepare_librispeech
    from cald_speech.data.tokenizer import CharTokenizer

    summary = prepare_librispeech(str(out / "corpus"), str(out / "manifests"))
    print(summary)
    CharTokenizer().save(str(out / "manifests" / "tokenizer.json"))
    return summary


def main(argv=None):
    """Runs the demo pipeline."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="small")
    p.add_argument("--out", default=str(ROOT / "data" / "demo"))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    args = p.parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    try:
        cfg = load_scale(args.scale, args.config)
        print(f"== stage 1/2: corpus ({args.scale})")
        stage_corpus(cfg, out, args.jobs)
        print("== stage 2/2: manifests")
        stage_manifests(cfg, out)
    except CaldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"demo finished in {time.time() - t0:.0f} s; data in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
