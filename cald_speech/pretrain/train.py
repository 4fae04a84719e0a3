"""Builds the offline starting model: character CTC training with the corpus held in memory.

The recipe in ``recipes/LibriSpeech/ASR`` is the general tool (SpeechBrain Brain,
checkpoints, feature cache, distillation). This module does one job, the last stage of
``tools/make_pretrained.sh``: train a wav2vec2 / HuBERT / WavLM CTC model from scratch
above a given CNN front end, fast enough that an accelerator's minutes go to updates.
The whole corpus is decoded once into memory (on the device), batches are cut from
utterances of similar length (little padding), augmentation runs on the device, and
CUDA runs in bfloat16.

- Model: built from the config of ``--init`` with seed ``--seed``; only the CNN feature
  encoder is taken from ``--init`` (the front end of ``python -m cald_speech.frontend``,
  or any model folder of the same family and CNN); ``--keep all`` continues from every
  weight instead.
- Augmentation, per batch: speed perturbation (resampling: tempo and pitch move
  together), additive noise from ``--noise-dir`` at a random SNR, a random gain;
  SpecAugment time masks from the config (``--mask-time-prob`` while training).
- Schedule: AdamW, linear warm-up then cosine decay to zero over ``--updates``; with
  ``--minutes`` instead, the number of updates is derived from the measured speed of
  the first ``--probe-updates`` (recorded in the output, so that a rerun can give it).
- Model selection: greedy-decoding CER on ``--dev-csv`` every ``--eval-every`` updates;
  the best state is written as a model folder (``config.json``, ``model.safetensors``,
  ``tokenizer.json``, ``cald_info.json``) with the learning curve in ``curve.json``.
- Resumable: ``state.pt`` in the output folder holds the training state at each
  evaluation; a rerun with the same arguments continues from it.

Command line (see ``tools/make_pretrained.sh``)::

    python -m cald_speech.pretrain --init data/pretrain/frontend \
        --train-csv train.csv --dev-csv dev.csv --out data/pretrain/run --updates 20000
"""

import argparse
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cald_speech.cli import add_version, fail, parse
from cald_speech.errors import CaldError, ConfigError, DataError
from cald_speech.pretrain.data import (
    SAMPLE_RATE,
    Corpus,
    FeatureBank,
    _load_noise,
    _sample_mask,
    add_noise,
    length_batches,
    speed_perturb,
)

logger = logging.getLogger(__name__)


_NO_DECAY = ("bias", "layer_norm", "LayerNorm", "norm.weight", "masked_spec_embed")


def build_model(init, keep="cnn", seed=7):
    """A CTC model of ``init``'s family and config: the CNN from ``init``, the rest fresh.

    ``keep="all"`` loads every weight of ``init`` instead (continuing a trained model).
    Returns ``(model, tokenizer)``; the tokenizer is ``init``'s ``tokenizer.json`` or the
    default character vocabulary.
    """
    from cald_speech.data.tokenizer import CharTokenizer, load_tokenizer
    from cald_speech.families import family_class, family_config_class
    from cald_speech.features import base_model
    from cald_speech.student import read_config, weights_file

    init = Path(init)
    config_dict = read_config(init)
    family = config_dict.get("model_type")
    tok_path = init / "tokenizer.json"
    tokenizer = load_tokenizer(tok_path) if tok_path.is_file() else CharTokenizer()
    config = family_config_class(family)(**{
        k: v for k, v in config_dict.items() if k not in ("architectures", "transformers_version")})
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.blank_id
    torch.manual_seed(seed)
    model = family_class(family, head="ctc")(config)
    from safetensors.torch import load_file

    weights = load_file(str(weights_file(init)))
    if keep == "all":
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise DataError(init, f"weights do not fit a {family} CTC model (missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]})",
                            "give a CTC model folder, or --keep cnn")
    elif keep == "cnn":
        marker = "feature_extractor."
        cnn_weights = {k.split(marker, 1)[1]: v for k, v in weights.items() if marker in k}
        if not cnn_weights:
            raise DataError(init, "holds no CNN feature encoder weights",
                            "give a model folder of the same family")
        base_model(model).feature_extractor.load_state_dict(cnn_weights, strict=True)
    else:
        raise ConfigError(f"--keep {keep!r}: use 'cnn' or 'all'")
    return model, tokenizer


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if any(s in name for s in _NO_DECAY) or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step, warmup, total, schedule="tristage", decay_from=0.4, final=0.05):
    """The learning rate at update ``step`` relative to the peak, fixed by the update budget.

    Linear warm-up over ``warmup`` updates, then either

    - ``"tristage"``: the peak held until ``decay_from`` x ``total``, then an exponential
      decay that reaches ``final`` x peak at ``total`` (the schedule of wav2vec2's
      fine-tuning: most updates at the peak, a few percent at the end); or
    - ``"cosine"``: a cosine decay from the peak to 0 at ``total``.

    Only ``step`` and the budget decide it, so a resumed run continues the same schedule.

    Example
    -------
    >>> [round(lr_factor(s, 10, 110, "cosine"), 3) for s in (0, 5, 10, 60, 110)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    >>> [round(lr_factor(s, 10, 110), 3) for s in (5, 10, 44, 77, 110)]
    [0.5, 1.0, 1.0, 0.224, 0.05]
    """
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    start = max(warmup, decay_from * total)
    if step <= start:
        return 1.0
    return final ** min(1.0, (step - start) / max(1.0, total - start))


def _errors(refs, hyps):
    """Corpus CER and WER (%) by the project's one engine (:mod:`cald_speech.data.metrics`).

    Example
    -------
    >>> [round(x, 2) for x in _errors(["A CAT", "HI"], ["A CAT", "HA"])]
    [14.29, 33.33]
    """
    from cald_speech.data.metrics import error_rates

    scores = error_rates(refs, hyps)
    return tuple(100.0 * (scores[k] or 0.0) for k in ("cer", "wer"))


@torch.no_grad()
def evaluate(model, corpus, tokenizer, max_samples, autocast, bank=None):
    """Greedy CTC decoding of ``corpus`` (from ``bank``'s features when given).

    Returns ``(CER %, WER %)``.
    """
    from cald_speech.data.tokenizer import ctc_collapse

    model.eval()
    hyps = [None] * len(corpus)
    for idx in length_batches(corpus.lengths.tolist(), max_samples):
        x, mask = (bank or corpus).inputs(idx)
        with autocast():
            logits = model(x, attention_mask=mask).logits.float()
        frames = model._get_feat_extract_output_lengths(mask.sum(-1).cpu()).tolist()
        best = logits.argmax(-1).cpu()
        for row, i in enumerate(idx):
            hyps[i] = tokenizer.decode(ctc_collapse(best[row, : frames[row]].tolist(),
                                                    tokenizer.blank_id))
    model.train()
    return _errors(corpus.texts, [" ".join(h.split()) for h in hyps])


def train(args):
    """Runs the training described by the parsed command-line ``args``; returns the info."""
    from cald_speech.features import base_model, enable_feature_input, freeze_feature_encoder

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but no CUDA device is available; use --device cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model, tokenizer = build_model(args.init, args.keep, args.seed)
    cfg = model.config
    saved_masks = _masks(cfg)
    _set_masks(cfg, (args.mask_time_prob, args.mask_time_length, args.mask_feature_prob,
                     args.mask_feature_length))
    if not hasattr(base_model(model), "masked_spec_embed"):
        # the config of --init turns time masks off; their mask embedding does not exist
        logger.info("SpecAugment time masks off: the config of %s has no mask embedding",
                    args.init)
        cfg.mask_time_prob = 0.0
    model.to(dev).train()
    if not args.train_cnn:
        freeze_feature_encoder(model)
    t0 = time.time()
    train_set = Corpus(args.train_csv, tokenizer, args.text_column, args.normalize, dev,
                       args.max_seconds, args.jobs)
    dev_set = Corpus(args.dev_csv, tokenizer, args.text_column, args.normalize, dev,
                     None, args.jobs)
    noise = _load_noise(args.noise_dir)
    logger.info("corpus: %d train utterances (%.2f h, %d skipped), %d dev, read in %.0f s",
                len(train_set), train_set.hours, len(train_set.skipped), len(dev_set),
                time.time() - t0)
    speeds = (0.9, 1.0, 1.1) if args.speed_perturb else (1.0,)
    bank = dev_bank = None
    if not args.train_cnn:  # the frozen CNN runs once per utterance and variant
        enable_feature_input(model)
        variants = [(s, False) for s in speeds]
        if noise is not None and args.noisy_copies:
            variants += [(s, True) for s in speeds]
        t1 = time.time()
        bank = _cached_bank(out, model, train_set, variants, noise, args)
        dev_bank = FeatureBank(model, dev_set, [(1.0, False)])
        logger.info("CNN features of %d variant(s) (speed, noise): %s, in %.0f s",
                    len(variants), variants, time.time() - t1)
    opt = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr,
                            betas=(0.9, 0.98), eps=1e-8)
    max_samples = int(args.batch_seconds * SAMPLE_RATE)
    gen = torch.Generator().manual_seed(args.seed)

    bf16 = args.precision == "bf16" or (args.precision == "auto" and dev.type == "cuda")

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    state_path = out / "state.pt"
    step, total, curve, best, info = 0, args.updates, [], None, {}
    epoch_batches = []
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    if state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        step, total, curve, best = st["step"], st["total"], st["curve"], st["best"]
        epoch_batches = st["epoch_batches"]
        info = json.loads((out / "curve.json").read_text())
        info.pop("curve", None)
        if args.updates is not None and args.updates != total:
            if args.updates <= step:
                raise ConfigError(f"--updates {args.updates}: the run in {out} has already "
                                  f"made {step} updates; give a larger budget")
            logger.warning("update budget changed on resume: %d (was %d); the schedule "
                           "follows the new budget from update %d", args.updates, total, step)
            total = args.updates
        logger.info("resumed at update %d of %d", step, total)
    t_train, losses = time.time(), []
    probe_at = None if total else args.probe_updates
    warmup = args.warmup
    while total is None or step < total:
        if not epoch_batches:
            epoch_batches = length_batches(train_set.lengths.tolist(), max_samples, gen,
                                           jitter=0.05)
        idx = epoch_batches.pop()
        targets = [train_set.targets[i] for i in idx]
        if bank is not None:
            x, mask = bank.inputs(idx, int(torch.randint(len(bank.variants), (1,),
                                                         generator=gen)))
        else:
            x, mask = _augmented_waveforms(train_set, idx, speeds, noise, args, gen)
        np.random.seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))  # SpecAugment
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(step, warmup, total or 10**9, args.schedule,
                                          args.decay_from, args.final_lr)
        with autocast():
            logits = model(x, attention_mask=mask).logits
        logp = F.log_softmax(logits.float(), -1).transpose(0, 1)
        frames = model._get_feat_extract_output_lengths(mask.sum(-1))
        tgt_lens = torch.tensor([len(t) for t in targets], device=dev)
        loss = F.ctc_loss(logp, torch.cat(targets).to(dev), frames, tgt_lens,
                          blank=tokenizer.blank_id, reduction="sum",
                          zero_infinity=True) / len(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        if torch.isfinite(norm):
            opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if probe_at is not None and step == probe_at:
            rate = step / (time.time() - t_train)
            budget_s = args.minutes * 60 - (time.time() - t0)
            total = max(step + 1, int(rate * budget_s * 0.97))
            logger.info("%.1f updates/s: %d updates fit in %.1f min", rate, total,
                        args.minutes)
        if step % args.eval_every == 0 or step == total:
            cer, wer = evaluate(model, dev_set, tokenizer, max_samples, autocast, dev_bank)
            curve.append({"updates": step, "train_loss": round(sum(losses) / len(losses), 4),
                          "dev_CER": round(cer, 3), "dev_WER": round(wer, 3),
                          "lr": opt.param_groups[0]["lr"],
                          "seconds": round(time.time() - t_train, 1)})
            losses = []
            logger.info("update %d/%s: loss %.3f dev CER %.2f WER %.2f (%.0f s)", step, total,
                        curve[-1]["train_loss"], cer, wer, time.time() - t_train)
            if best is None or cer < best["dev_CER"]:
                best = dict(curve[-1])
                info = _write_model(model, tokenizer, out, saved_masks, curve, best, {
                    "device": dev_name, "updates_planned": total,
                    "train_hours": round(train_set.hours, 3),
                    "train_utterances": len(train_set), "skipped": train_set.skipped,
                    "options": {**vars(args), "updates": total}})
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                        "epoch_batches": epoch_batches, "step": step, "total": total,
                        "curve": curve, "best": best}, state_path.with_suffix(".tmp"))
            os.replace(state_path.with_suffix(".tmp"), state_path)
    info.update(minutes=round((time.time() - t0) / 60, 2))
    if args.test_csv:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(out / "model" / "model.safetensors")))
        results = info.setdefault("results", {})
        for item in args.test_csv:
            name, _, path = item.rpartition("=")
            name = name or Path(path).stem
            test_set = Corpus(path, tokenizer, args.text_column, args.normalize, dev, None,
                              args.jobs)
            test_bank = FeatureBank(model, test_set, [(1.0, False)]) if bank else None
            cer, wer = evaluate(model, test_set, tokenizer, max_samples, autocast, test_bank)
            results[name] = {"CER": round(cer, 3), "WER": round(wer, 3),
                             "utterances": len(test_set)}
            logger.info("test %s: CER %.2f WER %.2f (%d utterances)", name, cer, wer,
                        len(test_set))
        info_path = out / "model" / "cald_info.json"
        saved = json.loads(info_path.read_text())
        saved["results"] = results
        info_path.write_text(json.dumps(saved, indent=2, default=str) + "\n")
    (out / "curve.json").write_text(json.dumps({"curve": curve, **info}, indent=2,
                                               default=str) + "\n")
    return info


def _cached_bank(out, model, corpus, variants, noise, args):
    """The training :class:`FeatureBank`, kept in ``out`` so that a resumed run skips it.

    The file's name carries a digest of what the features depend on (the utterances and
    their lengths, the variants, the noise draws' seed and range, the CNN's weights), so
    a changed corpus or front end computes a new bank.
    """
    import hashlib

    from cald_speech.features import base_model

    h = hashlib.sha1(json.dumps([corpus.ids, corpus.lengths.tolist(), variants, args.seed,
                                 args.snr_low, args.snr_high, noise is not None]).encode())
    for k, v in sorted(base_model(model).feature_extractor.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    path = out / f"feature_bank-{h.hexdigest()[:12]}.pt"
    if path.is_file():
        logger.info("CNN features read from %s", path)
        return FeatureBank.load(path)
    bank = FeatureBank(model, corpus, variants, noise, (args.snr_low, args.snr_high),
                       seed=args.seed)
    for old in out.glob("feature_bank-*.pt"):
        old.unlink()
    bank.save(path)
    return bank


def _augmented_waveforms(corpus, idx, speeds, noise, args, gen):
    """A batch of waveforms with speed, noise and gain augmentation (a trainable CNN)."""
    wavs, lens, _ = corpus.batch(idx)
    wavs, lens = speed_perturb(wavs, lens, speeds[int(torch.randint(len(speeds), (1,),
                                                                    generator=gen))])
    if noise is not None and float(torch.rand(1, generator=gen)) < args.noise_prob:
        snr = args.snr_low + (args.snr_high - args.snr_low) * torch.rand(len(idx),
                                                                        generator=gen)
        wavs = add_noise(wavs, lens, noise, snr, gen)
    gain_db = (torch.rand(len(idx), 1, generator=gen) * 2 - 1) * args.gain_db
    wavs = wavs * (10 ** (gain_db / 20)).to(wavs.device)
    return wavs, _sample_mask(wavs.shape[1], lens.to(wavs.device))


_MASK_KEYS = ("mask_time_prob", "mask_time_length", "mask_feature_prob", "mask_feature_length")


def _masks(cfg):
    """The config's SpecAugment settings: time and feature (channel) masks."""
    return tuple(getattr(cfg, k) for k in _MASK_KEYS)


def _set_masks(cfg, values):
    for k, v in zip(_MASK_KEYS, values):
        setattr(cfg, k, v)


def _write_model(model, tokenizer, out, masks, curve, best, extra):
    """Writes ``out/model`` (the current weights, the config's own SpecAugment settings)."""
    cfg = model.config
    training_masks = _masks(cfg)
    _set_masks(cfg, masks)
    info = {"what": "character CTC model trained by python -m cald_speech.pretrain",
            "torch": torch.__version__, "best_at": best["updates"],
            "dev": {"CER": best["dev_CER"], "WER": best["dev_WER"]}, **extra}
    folder = out / "model"
    tmp = out / "model.tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / "cald_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    _set_masks(cfg, training_masks)
    (out / "curve.json").write_text(json.dumps({"curve": curve, **info}, indent=2,
                                               default=str) + "\n")
    return info


def build_parser():
    """The ``python -m cald_speech.pretrain`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m cald_speech.pretrain",
                                description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--init", required=True, help="model folder giving the config and CNN front end")
    a("--keep", default="cnn", choices=("cnn", "all"), help="weights taken from --init")
    a("--train-csv", required=True, help="training manifest (packed or not)")
    a("--dev-csv", required=True, help="held-out manifest for model selection")
    a("--test-csv", nargs="*", default=[], metavar="[NAME=]CSV",
      help="manifests the best model is evaluated on at the end (cald_info.json results)")
    a("--out", required=True, help="output folder (model/, curve.json, state.pt)")
    a("--text-column", default="wrd")
    a("--normalize", type=int, default=1, help="normalise transcripts (1) or not (0)")
    a("--updates", type=int, default=None, help="number of updates")
    a("--minutes", type=float, default=None,
      help="instead of --updates: as many updates as fit in this time (measured)")
    a("--probe-updates", type=int, default=200, help="updates timed for --minutes")
    a("--batch-seconds", type=float, default=240.0, help="padded audio per batch (s)")
    a("--lr", type=float, default=2e-3)
    a("--warmup", type=int, default=500)
    a("--schedule", default="tristage", choices=("tristage", "cosine"),
      help="after warm-up: hold the peak, then decay exponentially to --final-lr x peak "
           "(tristage), or a cosine decay to 0")
    a("--decay-from", type=float, default=0.4,
      help="tristage: the share of the update budget after which the rate decays")
    a("--final-lr", type=float, default=0.05,
      help="tristage: the rate at the budget's end, relative to --lr")
    a("--precision", default="auto", choices=("auto", "fp32", "bf16"),
      help="bf16 autocast (auto: on CUDA only)")
    a("--weight-decay", type=float, default=0.01)
    a("--clip", type=float, default=5.0)
    a("--train-cnn", type=int, default=0, help="also train the CNN front end (1)")
    a("--speed-perturb", type=int, default=1)
    a("--noise-dir", default=None, help="folder of noise recordings for augmentation")
    a("--noise-prob", type=float, default=0.5, help="with --train-cnn 1: noisy batches")
    a("--noisy-copies", type=int, default=1,
      help="frozen CNN: also keep a noisy copy of each speed variant (1) or not (0)")
    a("--snr-low", type=float, default=5.0)
    a("--snr-high", type=float, default=30.0)
    a("--gain-db", type=float, default=6.0, help="with --train-cnn 1: random gain range")
    a("--mask-time-prob", type=float, default=0.05)
    a("--mask-time-length", type=int, default=10)
    a("--mask-feature-prob", type=float, default=0.1,
      help="SpecAugment channel masks (the config's mask_feature_prob) while training")
    a("--mask-feature-length", type=int, default=16)
    a("--max-seconds", type=float, default=20.0, help="leave out longer utterances")
    a("--eval-every", type=int, default=500)
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--jobs", type=int, default=None, help="decoding threads")
    a("--seed", type=int, default=7)
    return add_version(p)


def main(argv=None):
    """Entry point; returns the exit status (:mod:`cald_speech.cli`)."""
    parser = build_parser()
    args, status = parse(parser, argv)
    if args is None:
        return status
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if (args.updates is None) == (args.minutes is None):
            raise ConfigError("give exactly one of --updates and --minutes")
        info = train(args)
    except CaldError as exc:
        return fail(parser.prog, exc)
    print(f"wrote {Path(args.out) / 'model'}: dev CER {info['dev']['CER']:.2f} "
          f"WER {info['dev']['WER']:.2f} at update {info['best_at']} of "
          f"{info['updates_planned']}")
    return 0
