"""The CTC speech-recognition task on the shared distillation core.

:class:`CTCBrain` supplies what :class:`cald_speech.distill.brain.DistillBrain` leaves to a
task: how the model runs, its head, the CTC loss, WER/CER and the result files.
"""

import os

import speechbrain as sb
import torch.nn.functional as F

from cald_speech.data.tokenizer import apply_case
from cald_speech.distill.brain import DistillBrain
from cald_speech.distill.stages import stage_file, write_stats_json


class CTCBrain(DistillBrain):
    """CTC speech recognition (character or SentencePiece units, greedy decoding).

    The model is a HF ``*ForCTC`` model (teacher) or its converted student; its
    ``lm_head`` is the task head. Extra hparams: ``tokenizer`` (with ``decode_ctc``
    and a blank at index 0), ``wer_file`` pattern (``{split}`` filled in).
    Batches carry ``tokens`` (padded ids) and ``words`` (reference text).
    """

    TASK_DEFAULTS = {"best_metric": "WER", "wer_file": None}

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
            self._score(log_probs, in_len, batch)
        return loss

    def _score(self, log_probs, in_len, batch):
        tok = self.hparams.tokenizer
        best = log_probs.argmax(dim=-1).cpu()
        hyps = [tok.decode_ctc(best[i, : int(n)].tolist()).split() for i, n in enumerate(in_len)]
        refs = [apply_case(w, tok.case).split() for w in batch.words]  # the units' case
        self.wer_metric.append(batch.id, hyps, refs)
        self.cer_metric.append(batch.id, [list(" ".join(h)) for h in hyps],
                               [list(" ".join(r)) for r in refs])

    def on_stage_start(self, stage, epoch=None):
        """Fresh error-rate trackers for valid/test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.wer_metric = sb.utils.metric_stats.ErrorRateStats()
            self.cer_metric = sb.utils.metric_stats.ErrorRateStats()

    def stage_metrics(self):
        """WER and CER of the stage."""
        return {
            "WER": self.wer_metric.summarize("error_rate"),
            "CER": self.cer_metric.summarize("error_rate"),
        }

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
        """``wer_file`` (alignments, SpeechBrain format) and its ``.json`` summary."""
        pattern = self.hparams.wer_file
        if not pattern:
            return
        path = stage_file(pattern, split)
        with open(path, "w", encoding="utf-8") as w:
            self.wer_metric.write_stats(w)
        write_stats_json(os.path.splitext(path)[0] + ".json", stats)
