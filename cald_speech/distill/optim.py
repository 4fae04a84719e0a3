"""Optimiser parameter groups: weight decay only where it belongs.

Decoupled weight decay pulls every decayed tensor towards zero. For the SSM parameters
of a Mamba2 mixer (``A_log``, ``dt_bias``, ``D``, marked ``_no_weight_decay`` as in
mamba-ssm) that changes the model's time constants over a long run; biases and norm
weights are not decayed either (the convention of mamba-ssm and of transformers'
``Trainer``).
"""

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Module types whose weights are scales, never decayed.
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.InstanceNorm1d)


def _is_norm(module):
    return isinstance(module, NORM_TYPES) or "Norm" in type(module).__name__


def no_decay(name, param, owner):
    """Whether parameter ``name`` (held directly by module ``owner``) is left undecayed.

    Example
    -------
    >>> ln = nn.LayerNorm(4)
    >>> no_decay("weight", ln.weight, ln), no_decay("weight", nn.Linear(2, 2).weight, None)
    (True, False)
    """
    return (
        getattr(param, "_no_weight_decay", False)
        or name.rsplit(".", 1)[-1] == "bias"
        or (owner is not None and _is_norm(owner))
    )


def decay_groups(module, exclude=()):
    """Two parameter groups of ``module``'s trainable parameters: decayed and not.

    Arguments
    ---------
    module : torch.nn.Module
        Owner of the parameters (a tensor shared by two modules is listed once).
    exclude : iterable of torch.nn.Parameter
        Parameters left out (e.g. a head that has its own optimiser).

    Returns
    -------
    list of dict
        ``[{"params": decayed}, {"params": undecayed, "weight_decay": 0.0}]``, empty
        groups dropped. The first group takes the optimiser's own ``weight_decay``.

    Example
    -------
    >>> m = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    >>> [len(g["params"]) for g in decay_groups(m)]
    [1, 3]
    """
    skip = {id(p) for p in exclude}
    decayed, undecayed = [], []
    for _, owner in module.named_modules():
        for name, p in owner.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in skip:
                continue
            skip.add(id(p))
            (undecayed if no_decay(name, p, owner) else decayed).append(p)
    groups = []
    if decayed:
        groups.append({"params": decayed})
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    return groups


def make_optimizer(opt_class, module, name, exclude=()):
    """``opt_class`` over :func:`decay_groups` of ``module``; logs the group sizes once.

    Returns None when ``module`` has no trainable parameter left.

    Example
    -------
    >>> import torch
    >>> from functools import partial
    >>> opt = make_optimizer(partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01),
    ...                      nn.Linear(3, 3), "encoder")
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.01, 0.0]
    """
    groups = decay_groups(module, exclude)
    if not groups:
        return None
    opt = opt_class(groups)
    sizes = [(len(g["params"]), sum(p.numel() for p in g["params"])) for g in opt.param_groups]
    logger.info(
        "%s optimiser: %s", name,
        "; ".join(f"{n} tensors / {k:,} params at weight_decay {g['weight_decay']}"
                  for (n, k), g in zip(sizes, opt.param_groups)),
    )
    return opt


def optimizer_params(optimizer):
    """Every parameter of every group of ``optimizer`` (for gradient clipping).

    Example
    -------
    >>> import torch
    >>> opt = torch.optim.SGD(decay_groups(nn.Linear(2, 2)), lr=0.1)
    >>> len(optimizer_params(opt))
    2
    """
    return [p for g in optimizer.param_groups for p in g["params"]]


#: Config fields that make a transformers speech model's train-mode forward stochastic.
STOCHASTIC_FIELDS = ("hidden_dropout", "attention_dropout", "activation_dropout",
                     "feat_proj_dropout", "final_dropout", "layerdrop")


def stochastic_in_training(model):
    """Whether ``model``'s forward in train mode can differ from eval mode.

    Dropout (modules or config probabilities, attention dropout included), LayerDrop
    and SpecAugment-style masking all count.

    Example
    -------
    >>> stochastic_in_training(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    False
    >>> stochastic_in_training(torch.nn.Dropout(0.1))
    True
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        cfg = getattr(m, "config", None)
        if cfg is None:
            continue
        if any(float(getattr(cfg, k, 0.0) or 0.0) > 0 for k in STOCHASTIC_FIELDS):
            return True
        if getattr(cfg, "apply_spec_augment", False) and (
            float(getattr(cfg, "mask_time_prob", 0.0) or 0.0) > 0
            or float(getattr(cfg, "mask_feature_prob", 0.0) or 0.0) > 0
        ):
            return True
    return False


def average_gradients(params):
    """Averages the gradients of ``params`` over the processes of a DDP run, in place.

    For modules that DDP does not wrap (the co-trained teacher of trajectory
    guidance), so that every process applies the same update. A parameter without a
    gradient in one process counts as zero there (LayerDrop may skip different layers
    in different processes). Does nothing outside a process group.

    Example
    -------
    >>> p = torch.nn.Parameter(torch.ones(2))
    >>> p.grad = torch.full((2,), 3.0)
    >>> average_gradients([p])  # a single process: unchanged
    >>> p.grad
    tensor([3., 3.])
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def ddp_find_unused_parameters(model, current, given, spec_augment_off=False):
    """Whether DDP must look for parameters without a gradient (``find_unused_parameters``).

    DDP waits in every step for a gradient of every trainable parameter; one that gets
    none (LayerDrop drops its layer in one process, SpecAugment switched off leaves
    ``masked_spec_embed`` out of the loss, a head a task does not use) makes it fail
    ("Expected to have finished reduction in the prior iteration") or wait forever.
    The search costs a walk over the autograd graph per step, so it is on unless the
    run set ``find_unused_parameters: false`` itself (``given``) — and on regardless
    where the configuration is known to leave a parameter out.

    Arguments
    ---------
    model : torch.nn.Module
        The bare encoder model (``config`` and ``masked_spec_embed`` are read).
    current : bool
        The run's setting.
    given : bool
        Whether the run set it (hparams or command line) rather than took the default.
    spec_augment_off : bool
        SpecAugment is switched off while the layer loss is on.

    Example
    -------
    >>> m = torch.nn.Linear(2, 2)
    >>> ddp_find_unused_parameters(m, False, given=False)
    True
    >>> ddp_find_unused_parameters(m, False, given=True)
    False
    """
    reasons = []
    layerdrop = getattr(getattr(model, "config", None), "layerdrop", 0.0)
    if layerdrop:  # each process drops its own layers
        reasons.append(f"LayerDrop {layerdrop:.2f}")
    if spec_augment_off and getattr(model, "masked_spec_embed", None) is not None:
        reasons.append("spec_augment_layer_loss: off (masked_spec_embed unused)")
    if current or (given and not reasons):
        return current
    logger.info("DDP: find_unused_parameters on (%s)", ", ".join(reasons) or (
        "set find_unused_parameters: false when every parameter gets a gradient in "
        "every step"))
    return True


def rank_mean(values):
    """The mean of each float over the processes of a distributed run (unchanged alone).

    Every process must call it with the same keys (a collective operation); ``None``
    values are passed through.

    Example
    -------
    >>> rank_mean({"loss": 2.0, "skipped": None})
    {'loss': 2.0, 'skipped': None}
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(k for k, v in values.items() if v is not None)
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return {**values, **dict(zip(keys, flat.tolist()))}
