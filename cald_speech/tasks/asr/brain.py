"""The CTC speech-recognition task on the shared distillation core.

:class:`CTCBrain` supplies what :class:`cald_speech.distill.brain.DistillBrain` leaves to a
task: how the model runs, its head, the CTC loss, WER/CER and the result files.
"""

import json
import logging
import os

import speechbrain as sb
import torch.nn.functional as F

from cald_speech.data.metrics import totals, utterance_scores
from cald_speech.data.tokenizer import apply_case
from cald_speech.decoding import BeamDecoder
from cald_speech.distill.brain import DistillBrain
from cald_speech.distill.stages import stage_file, write_stats_json

logger = logging.getLogger(__name__)

#: per-utterance fields of ``<wer_file>_utterances.jsonl`` (besides ``ID``)
UTTERANCE_FIELDS = ("ref", "hyp", "word_errors", "ref_words", "char_errors", "ref_chars")


class CTCBrain(DistillBrain):
    """CTC speech recognition (character or SentencePiece units, greedy decoding).

    The model is a HF ``*ForCTC`` model (teacher) or its converted student; its
    ``lm_head`` is the task head. Extra hparams: ``tokenizer`` (with ``decode_ctc``
    and a blank at index 0), ``wer_file`` pattern (``{split}`` filled in).
    Batches carry ``tokens`` (padded ids) and ``words`` (reference text).
    """

    TASK_DEFAULTS = {"best_metric": "WER", "wer_file": None, "beam_size": None, "lm": None,
                     "lm_weight": None, "word_bonus": None, "beam_engine": "auto"}
    scored = None   # the stage's transcripts: {"ID", "ref", "hyp": list of str}
    _counts = None  # their per-utterance counts (cald_speech.data.metrics), once computed

    def run_model(self, model, input_values, attention_mask, hidden_states):
        """Returns (hidden states or None, frame logits)."""
        out = model(
            input_values, attention_mask=attention_mask, output_hidden_states=hidden_states
        )
        return (out.hidden_states if hidden_states else None), out.logits

    def head_module(self, model):
        """The CTC output projection."""
        return model.lm_head

    def task_loss(self, logits, frame_mask, batch, stage):
        """CTC loss over valid frames, mean over the items whose audio was readable."""
        tokens, tok_rel = batch.tokens
        tok_len = (tok_rel * tokens.shape[1]).round().long()
        in_len = frame_mask.sum(dim=1)
        keep = in_len > 0
        log_probs = F.log_softmax(logits.float(), dim=-1)
        if keep.any():
            loss = F.ctc_loss(
                log_probs[keep].transpose(0, 1), tokens[keep], in_len[keep], tok_len[keep],
                blank=0, reduction="mean", zero_infinity=True,
            )
        else:
            loss = logits.sum() * 0.0
        if stage != sb.Stage.TRAIN:
            self._score(log_probs, in_len, batch, stage)
        return loss

    def test_decoder(self):
        """The test stage's beam decoder (``beam_size``, ``lm``, ``lm_weight``,
        ``word_bonus`` in the hparams), or ``None``: greedy, as in validation."""
        hp = self.hparams
        if getattr(self, "_decoder", None) is None and hp.beam_size is not None:
            self._decoder = BeamDecoder(hp.tokenizer, hp.beam_size, hp.lm, hp.lm_weight,
                                        hp.word_bonus, engine=hp.beam_engine)
        return getattr(self, "_decoder", None)

    def _score(self, log_probs, in_len, batch, stage=None):
        """Keeps the batch's transcripts beside their references (the units' case):
        greedy, or the test stage's beam search (:meth:`test_decoder`)."""
        tok = self.hparams.tokenizer
        decoder = self.test_decoder() if stage == sb.Stage.TEST else None
        best = log_probs.argmax(dim=-1).cpu()
        for i, n in enumerate(in_len):
            if decoder is None:
                hyp = tok.decode_ctc(best[i, : int(n)].tolist())
            else:
                hyp = decoder.decode(log_probs[i, : int(n)], 1.0, timestamps=False)[0]
            self.scored["ID"].append(batch.id[i])
            self.scored["hyp"].append(" ".join(hyp.split()))
            self.scored["ref"].append(" ".join(apply_case(batch.words[i], tok.case).split()))

    def on_stage_start(self, stage, epoch=None):
        """Fresh transcript lists for valid/test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.scored = {"ID": [], "ref": [], "hyp": []}
            self._counts = None

    def utterance_counts(self):
        """Per-utterance error counts of the stage's transcripts (computed once)."""
        if self._counts is None:
            self._counts = utterance_scores(self.scored["ref"], self.scored["hyp"])
        return self._counts

    def stage_metrics(self):
        """WER and CER (%) of the stage, by :mod:`cald_speech.data.metrics` (jiwer).

        With no reference word in the stage, see that module's conventions; with no
        utterance at all, NaN.
        """
        total = totals(self.utterance_counts())
        if total["empty_references"]:
            logger.warning("%d of %d utterances have an empty reference: their hypothesis "
                           "words count as insertions (cald_speech.data.metrics)",
                           total["empty_references"], total["items"])
        return {key.upper(): float("nan") if total[key] is None else 100.0 * total[key]
                for key in ("wer", "cer")}

    def best_metric(self):
        """Checkpoints are ranked by ``best_metric`` (``WER``, the default, or ``CER``)."""
        return self.hparams.best_metric, "min"

    def checkpoint_rank(self, stats):
        """The best metric capped at 100 %, ties broken by the other error rate.

        Above 100 % WER a model is no better than one that outputs nothing, and
        early in training every checkpoint may be there: ranking raw WER would keep
        the checkpoint that emits nothing (exactly 100 %) over one that has started
        to spell (101 % WER, far lower CER). The cap makes those a tie for CER. Where
        WER stays near 100 % (a weak model), ``best_metric: CER`` ranks by CER.

        Example
        -------
        >>> brain = CTCBrain.__new__(CTCBrain)
        >>> brain.hparams = type("H", (), {"best_metric": "WER"})()
        >>> rank = brain.checkpoint_rank
        >>> rank({"WER": 100.0, "CER": 60.0}) < rank({"WER": 100.0, "CER": 90.0})
        True
        >>> rank({"WER": 99.75, "CER": 99.0}) < rank({"WER": 100.0, "CER": 0.0})
        True
        >>> rank({"WER": 101.0, "CER": 77.0}) < rank({"WER": 100.0, "CER": 99.0})
        True
        >>> brain.hparams.best_metric = "CER"
        >>> rank({"WER": 100.0, "CER": 67.8}) < rank({"WER": 99.75, "CER": 71.5})
        True
        """
        best = self.best_metric()[0]
        other = "CER" if best == "WER" else "WER"
        return min(stats[best], 100.0) + 1e-4 * min(stats[other], 100.0)

    def write_stage_files(self, split, stats):
        """``wer_file`` and, beside it, ``<name>.json`` and ``<name>_utterances.jsonl``.

        ``wer_file`` is SpeechBrain's ``ErrorRateStats`` report (alignments for reading);
        ``.json`` holds the stage's statistics; ``_utterances.jsonl`` one JSON object per
        utterance with ``ID``, ``ref``, ``hyp``, ``word_errors``, ``ref_words``,
        ``char_errors`` and ``ref_chars``: the numbers the rates are computed from, which
        ``cald-bench compare`` reads.
        """
        pattern = self.hparams.wer_file
        if not pattern:
            return
        path = stage_file(pattern, split)
        report = sb.utils.metric_stats.ErrorRateStats()
        report.append(self.scored["ID"], [h.split() for h in self.scored["hyp"]],
                      [r.split() for r in self.scored["ref"]])
        with open(path, "w", encoding="utf-8") as w:
            report.write_stats(w)
        base = os.path.splitext(path)[0]
        write_stats_json(base + ".json", stats)
        with open(base + "_utterances.jsonl", "w", encoding="utf-8") as f:
            for uid, u in zip(self.scored["ID"], self.utterance_counts()):
                row = {"ID": uid, **{k: u[k] for k in UTTERANCE_FIELDS}}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
