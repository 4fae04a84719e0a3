"""Padding-aware distillation losses.

All losses take a frame mask ``(B, T)`` (``True`` on valid frames) and average over
valid frames only, so a padded batch gives the same per-utterance contribution as each
utterance alone (up to the frame-count weighting of a batch mean, which is the same as
concatenating the utterances' frames).

Example
-------
>>> import torch
>>> h_s = [torch.randn(2, 5, 4) for _ in range(3)]
>>> h_t = [h.clone() for h in h_s]
>>> mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
>>> float(masked_layer_loss(h_s, h_t, mask))
0.0
"""

import torch
import torch.nn.functional as F

from cald_speech.errors import ConfigError


def parameter_free_layer_norm(x, eps=1e-5):
    """Layer norm over the last dimension without affine parameters (fp32)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def _masked_mean(values, mask):
    """Mean of ``values`` (B, T) over positions where ``mask`` (B, T) is True."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _check_mask(mask, ref, what):
    if mask is None:
        return torch.ones(ref.shape[:2], dtype=torch.bool, device=ref.device)
    if mask.shape != ref.shape[:2]:
        raise ValueError(
            f"{what}: frame mask has shape {tuple(mask.shape)}, expected {tuple(ref.shape[:2])}"
        )
    return mask.bool()


def masked_layer_loss(student_hiddens, teacher_hiddens, mask=None, layers=None, weights=None):
    """CALD layer alignment: mean over layers of MSE(LN(h_teacher), LN(h_student)).

    LN is a parameter-free layer norm; the MSE averages over channels and valid frames.
    The teacher side is detached.

    Arguments
    ---------
    student_hiddens, teacher_hiddens : sequence of torch.Tensor
        Hidden states per layer, each (B, T, C), indexed alike (index 0 is usually the
        encoder input, which is why ``layers`` defaults to 1..L).
    mask : torch.Tensor or None
        (B, T) bool, True on valid frames.
    layers : sequence of int, optional
        Layer indices to align (default: every index from 1 on).
    weights : sequence of float, optional
        One weight per entry of ``layers`` (default: equal); normalised to sum to 1.

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Example
    -------
    >>> import torch
    >>> s = [torch.zeros(1, 3, 4), torch.tensor([[[1., -1, 1, -1]] * 3])]
    >>> t = [torch.zeros(1, 3, 4), torch.tensor([[[-1., 1, -1, 1]] * 3])]
    >>> round(float(masked_layer_loss(s, t)), 3)
    4.0
    """
    if len(student_hiddens) != len(teacher_hiddens):
        raise ConfigError(
            f"student has {len(student_hiddens)} hidden states, teacher "
            f"{len(teacher_hiddens)}: layer alignment needs the same depth"
        )
    n = len(student_hiddens)
    layers = list(range(1, n)) if layers is None else list(layers)
    if not layers:
        raise ConfigError("layer alignment needs at least one layer")
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ConfigError(f"layer indices {bad} out of range for {n} hidden states")
    if weights is None:
        weights = [1.0] * len(layers)
    if len(weights) != len(layers):
        raise ConfigError(f"{len(weights)} layer weights given for {len(layers)} layers")
    total_w = float(sum(weights))
    mask = _check_mask(mask, student_hiddens[layers[0]], "masked_layer_loss")
    loss = 0.0
    for i, w in zip(layers, weights):
        s = parameter_free_layer_norm(student_hiddens[i])
        t = parameter_free_layer_norm(teacher_hiddens[i].detach())
        per_frame = (s - t).pow(2).mean(dim=-1)
        loss = loss + (w / total_w) * _masked_mean(per_frame, mask)
    return loss


def logit_kd_loss(student_logits, teacher_logits, mask=None, temperature=2.0):
    """Output distillation: KL(teacher || student) of frame posteriors at temperature τ.

    Scaled by τ² (so gradients keep their magnitude across temperatures, as in
    Hinton et al.) and averaged over valid frames.

    Arguments
    ---------
    student_logits, teacher_logits : torch.Tensor
        (B, T, V) unnormalised scores.
    mask : torch.Tensor or None
        (B, T) bool, True on valid frames.
    temperature : float
        Softening temperature τ > 0.

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Example
    -------
    >>> import torch
    >>> x = torch.randn(2, 4, 6)
    >>> float(logit_kd_loss(x, x))
    0.0
    >>> bool(logit_kd_loss(x, torch.randn(2, 4, 6)) > 0)
    True
    """
    if temperature <= 0:
        raise ConfigError(f"KD temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {tuple(student_logits.shape)}, "
            f"teacher {tuple(teacher_logits.shape)}"
        )
    mask = _check_mask(mask, student_logits, "logit_kd_loss")
    tau = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    return _masked_mean(kl, mask) * tau * tau


def distilhubert_loss(predictions, targets, mask=None, cos_weight=1.0):
    """DistilHuBERT/GenDistiller layer loss: mean over layers of L1 − λ·log σ(cos).

    Arguments
    ---------
    predictions, targets : sequence of torch.Tensor
        Predicted and target layers, each (B, T, C), paired by position.
    mask : torch.Tensor or None
        (B, T) bool, True on valid frames.
    cos_weight : float
        λ, weight of the cosine term.

    Returns
    -------
    loss : torch.Tensor
        Scalar loss.
    parts : dict
        Detached per-layer ``l1`` and ``cos`` values (lists of floats) for logging.

    Example
    -------
    >>> import torch
    >>> p = [torch.ones(1, 3, 4)]
    >>> loss, parts = distilhubert_loss(p, p)
    >>> parts["l1"], [round(c, 4) for c in parts["cos"]]
    ([0.0], [1.0])
    """
    if len(predictions) != len(targets) or not predictions:
        raise ConfigError(
            f"{len(predictions)} predicted layers for {len(targets)} targets"
        )
    mask = _check_mask(mask, predictions[0], "distilhubert_loss")
    loss = 0.0
    parts = {"l1": [], "cos": []}
    for p, t in zip(predictions, targets):
        p, t = p.float(), t.detach().float()
        l1 = _masked_mean((p - t).abs().mean(dim=-1), mask)
        cos = F.cosine_similarity(p, t, dim=-1, eps=1e-8)
        cos_term = _masked_mean(F.logsigmoid(cos), mask)
        loss = loss + l1 - cos_weight * cos_term
        parts["l1"].append(float(l1.detach()))
        parts["cos"].append(float(_masked_mean(cos.detach(), mask)))
    return loss / len(predictions), parts
