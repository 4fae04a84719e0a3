"""Greedy vs beam search vs beam search with an n-gram LM, on the same posteriors.

``cald-bench decoding --model DIR [--model DIR ...] --csv test.csv --dev-csv dev.csv
--lm LM.arpa`` computes each model's frame posteriors of every item once, then decodes
them three ways — greedy (argmax), prefix beam search, beam search fused with the LM —
and scores each against the references (jiwer, as ``cald-bench wer``). The LM weight and
word bonus are chosen on the dev split only (a small grid, :func:`tune_lm`); test is
decoded once with the choice. It also times decoding against the transcription itself:
with ``--long-minutes N`` the test audio is concatenated to N minutes, transcribed in the
model's default mode (one pass for linear students) and decoded, giving the share of
decoding in the time of a long transcription. Writes ``decoding.json`` (and a PNG) under
``--out-dir``, prints a table and records the machine.

Example
-------
>>> grid = lm_grid([0.5, 1.0], [0.0, 2.0])
>>> grid
[(0.5, 0.0), (0.5, 2.0), (1.0, 0.0), (1.0, 2.0)]
"""

import sys
import time
from pathlib import Path

import torch

from cald_speech.bench.options import LM_WEIGHTS, WORD_BONUSES
from cald_speech.bench.options import decoding_parser as build_parser
from cald_speech.bench.report import MemoryMeter, format_table, machine_info, write_json
from cald_speech.cli import EXIT_OK, fail, parse
from cald_speech.errors import CaldError, ConfigError, DataError


def model_label(path):
    """A model's name for tables: its folder, or the run folder of a recipe's ``model/``.

    Example
    -------
    >>> model_label("results/runs/teacher/model"), model_label("models/pretrained-offline")
    ('teacher', 'pretrained-offline')
    """
    path = Path(path)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def lm_grid(weights=None, bonuses=None, engine="speechbrain"):
    """Every (LM weight, word bonus) pair of the grid (default: the grid searched on dev
    for ``engine``: its weights are on another scale for each engine)."""
    from cald_speech import decoding_flashlight as fl

    flash = engine == "flashlight"
    weights = weights or (fl.LM_WEIGHTS if flash else LM_WEIGHTS)
    bonuses = bonuses or (fl.WORD_BONUSES if flash else WORD_BONUSES)
    return [(float(w), float(b)) for w in weights for b in bonuses]


def posteriors(asr, items, mode="auto"):
    """``(log posteriors per item ID, failed ID -> message, seconds)`` of a Transcriber."""
    from cald_speech.data.audio import load_audio
    from cald_speech.errors import AudioError

    out, failed = {}, {}
    t0 = time.perf_counter()
    for it in items:
        try:
            wav, _ = load_audio(it["wav"], target_sr=asr.rate)
        except AudioError as exc:
            failed[it["ID"]] = str(exc)
            continue
        out[it["ID"]] = asr.log_probs(wav, mode=mode, progress=False)
    return out, failed, time.perf_counter() - t0


def decode(asr, lps, decoder=None):
    """``(ID -> normalised text, seconds)``: greedy with ``decoder=None``."""
    from cald_speech.bench.wer import norm_text

    t0 = time.perf_counter()
    hyps = {}
    for key, lp in lps.items():
        if decoder is None:
            text = asr.tokenizer.decode_ctc(lp.argmax(-1))
        else:
            text = decoder.decode(lp, asr.frame_shift, timestamps=False)[0]
        hyps[key] = norm_text(text)
    return hyps, time.perf_counter() - t0


def score(items, hyps):
    """jiwer's corpus WER/CER of the items that have a hypothesis."""
    from cald_speech.bench.wer import error_rates

    kept = [it for it in items if it["ID"] in hyps]
    return error_rates([it["ref"] for it in kept], [hyps[it["ID"]] for it in kept])


def tune_lm(asr, dev_items, dev_lps, lm, beam_size, grid=None, engine="auto"):
    """The (LM weight, word bonus) of the grid with the lowest dev WER (ties: CER, then
    the smaller weight); returns ``(best dict, every grid point)``."""
    from cald_speech.decoding import BeamDecoder

    points = []
    base = BeamDecoder(asr.tokenizer, beam_size, lm, engine=engine)
    for weight, bonus in grid or lm_grid(engine=base.engine):
        decoder = base.with_weights(weight, bonus)
        hyps, seconds = decode(asr, dev_lps, decoder)
        s = score(dev_items, hyps)
        points.append({"lm_weight": weight, "word_bonus": bonus, "wer": s["wer"],
                       "cer": s["cer"], "seconds": seconds})
    best = min(points, key=lambda p: (p["wer"], p["cer"], p["lm_weight"], p["word_bonus"]))
    return best, points


def _long_audio(items, minutes, rate):
    """The test items' audio concatenated (repeated as needed) to ``minutes``."""
    from cald_speech.data.audio import load_audio

    target = int(minutes * 60 * rate)
    pieces, n = [], 0
    while n < target:
        for it in items:
            wav, _ = load_audio(it["wav"], target_sr=rate)
            pieces.append(wav)
            n += wav.numel()
            if n >= target:
                break
    return torch.cat(pieces)[:target]


def run_model(folder, test, dev, lm, beam_size, grid, mode, long_minutes, device,
              engines=("auto",)):
    """Every measurement of one model (see the module doc): greedy, then beam and
    beam + LM for each of ``engines``; ``grid`` ``(weights, bonuses)``, ``None`` for
    each engine's default."""
    from cald_speech.decoding import BeamDecoder, resolve_engine
    from cald_speech.hub import resolve_model_source
    from cald_speech.inference import Transcriber, align_words

    asr = Transcriber.from_pretrained(resolve_model_source(folder), device=device)
    lps, failed, post_s = posteriors(asr, test, mode)
    audio_min = sum(lp.shape[0] for lp in lps.values()) * asr.frame_shift / 60
    result = {"model": str(folder), "items": len(lps), "failed": failed,
              "audio_minutes": audio_min, "posterior_seconds": post_s, "rows": []}
    rows = [("greedy", None)]
    dev_lps = posteriors(asr, dev, mode)[0] if lm is not None else None
    engines = list(dict.fromkeys(resolve_engine(e, asr.tokenizer) for e in engines))
    for engine in engines:
        tag = f" ({engine})" if len(engines) > 1 else ""
        rows.append((f"beam {beam_size}{tag}", BeamDecoder(asr.tokenizer, beam_size,
                                                          engine=engine)))
        if lm is None:
            continue
        best, points = tune_lm(asr, dev, dev_lps, lm, beam_size,
                               grid and lm_grid(*grid, engine=engine), engine)
        result.setdefault("lm_tuning", {})[engine] = {"dev_items": len(dev_lps),
                                                      "best": best, "grid": points}
        rows.append((f"beam {beam_size} + LM{tag}", BeamDecoder(
            asr.tokenizer, beam_size, lm, best["lm_weight"], best["word_bonus"],
            engine=engine)))
    for name, decoder in rows:
        hyps, seconds = decode(asr, lps, decoder)
        result["rows"].append({"decoding": name, **score(test, hyps),
                               "decode_seconds": seconds,
                               "decode_s_per_audio_min": seconds / audio_min if audio_min
                               else None,
                               "settings": None if decoder is None else decoder.settings()})
    if long_minutes:
        wav = _long_audio(test, long_minutes, asr.rate)
        t0 = time.perf_counter()
        lp = asr.log_probs(wav, mode="auto", progress=False)
        transcribe_s = time.perf_counter() - t0
        timing = {"minutes": long_minutes, "mode": asr.default_mode(wav.numel()),
                  "posterior_seconds": transcribe_s}
        for name, decoder in rows:
            meter = MemoryMeter("cpu").start()
            t0 = time.perf_counter()
            if decoder is None:
                _, words = align_words(lp, asr.tokenizer, asr.frame_shift)
            else:
                _, words = decoder.decode(lp, asr.frame_shift)
            sec = time.perf_counter() - t0
            mem = meter.stop()
            timing[name] = {"decode_seconds": sec, "words": len(words),
                            "share_of_transcription": sec / (transcribe_s + sec),
                            "decode_extra_rss_mb": mem["extra_rss_mb"]}
        result["long"] = timing
    return result


def table(results):
    """The results as one text table."""
    rows = []
    for res in results:
        greedy = res["rows"][0]["wer"]
        for r in res["rows"]:
            rows.append(dict(model=model_label(res["model"]), decoding=r["decoding"],
                             wer=100 * r["wer"], cer=100 * r["cer"],
                             rel=(100 * (r["wer"] - greedy) / greedy) if greedy else None,
                             dec=r["decode_s_per_audio_min"]))
    cols = [("model", "model", "s"), ("decoding", "decoding", "s"), ("wer", "WER %", ".2f"),
            ("cer", "CER %", ".2f"), ("rel", "WER change vs greedy, %", "+.1f"),
            ("dec", "decode s per audio min", ".3f")]
    return format_table(rows, cols)


def plot(results, path):
    """WER and CER per decoding and model, side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("wer", "cer")):
        width = 0.8 / max(1, len(results))
        for k, res in enumerate(results):
            xs = [i + k * width for i in range(len(res["rows"]))]
            ax.bar(xs, [100 * r[key] for r in res["rows"]], width,
                   label=model_label(res["model"]))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(results[0]["rows"]))])
        ax.set_xticklabels([r["decoding"] for r in results[0]["rows"]])
        ax.set_ylabel(f"{key.upper()} % (test)")
        ax.set_title(f"{key.upper()} by decoding")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv=None):
    """Entry point of ``cald-bench decoding``; returns the exit status."""
    args, status = parse(build_parser(), argv)
    return status if args is None else command(args)


def command(args):
    """``cald-bench decoding`` on parsed arguments (:func:`build_parser`)."""
    from cald_speech.bench.wer import read_items
    from cald_speech.decoding import check_beam_options

    prog = "cald-bench decoding"
    try:
        for engine in args.beam_engine:
            check_beam_options(args.beam_size, args.lm, engine=engine)
        if args.lm is not None and args.dev_csv is None:
            raise ConfigError("--lm needs --dev-csv: the LM weight and word bonus are "
                              "chosen on a dev split, never on the test split")
        test = read_items(args.csv, args.text_column, None, args.limit, args.normalize)
        dev = (read_items(args.dev_csv, args.text_column, None, args.limit, args.normalize)
               if args.dev_csv else [])
        grid = ((args.lm_weights, args.word_bonuses)
                if args.lm_weights or args.word_bonuses else None)
        results = [run_model(m, test, dev, args.lm, args.beam_size, grid, args.mode,
                             args.long_minutes, args.device, args.beam_engine)
                   for m in args.model]
    except CaldError as exc:
        return fail(prog, exc)
    if not any(r["items"] for r in results):
        return fail(prog, DataError(args.csv, "no readable item"))
    print(table(results))
    for res in results:
        for engine, tuning in res.get("lm_tuning", {}).items():
            b = tuning["best"]
            print(f"{model_label(res['model'])} ({engine}): LM weight {b['lm_weight']:g}, "
                  f"word bonus {b['word_bonus']:g} chosen on dev (WER "
                  f"{100 * b['wer']:.2f} %)")
        if "long" in res:
            lg = res["long"]
            shares = ", ".join(f"{k} {100 * v['share_of_transcription']:.1f} %"
                               for k, v in lg.items() if isinstance(v, dict))
            print(f"{model_label(res['model'])}, {lg['minutes']:g} min in {lg['mode']} mode: "
                  f"posteriors {lg['posterior_seconds']:.1f} s; decoding's share: {shares}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"results": results, "csv": args.csv, "dev_csv": args.dev_csv, "lm": args.lm,
               "machine": machine_info(), "options": vars(args)}
    print(f"wrote {write_json(out / 'decoding.json', summary)}, "
          f"{plot(results, out / 'decoding.png')}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
