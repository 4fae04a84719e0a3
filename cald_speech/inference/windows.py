"""Windows for models that cannot take a whole file at once, and stitching them back.

Each window is run as a file of its own; only its centre frames are kept
(:func:`window_plan`), and the kept CTC posteriors are put back together
(:func:`stitch`) before one decoding.
"""

import torch

from cald_speech.errors import ConfigError


def window_plan(num_frames, window_frames, context_frames):
    """Windows over ``num_frames`` frames and the centre frames each one keeps.

    Every window spans at most ``window_frames`` frames; its first and last
    ``context_frames`` frames are context (dropped) except at the start and end of the
    input, and the kept parts tile ``[0, num_frames)`` without gap or overlap.

    Arguments
    ---------
    num_frames : int
        Frames of the whole input.
    window_frames : int
        Frames a window spans.
    context_frames : int
        Frames of context on each side.

    Returns
    -------
    list of tuple
        ``(start, end, keep_start, keep_end)`` per window, in frames.

    Example
    -------
    >>> window_plan(10, 20, 2)
    [(0, 10, 0, 10)]
    >>> window_plan(25, 10, 2)
    [(0, 10, 0, 8), (6, 16, 8, 14), (12, 22, 14, 20), (18, 25, 20, 25)]
    """
    num_frames, window_frames = int(num_frames), int(window_frames)
    context_frames = int(context_frames)
    if num_frames <= window_frames:
        return [(0, num_frames, 0, num_frames)]
    step = window_frames - 2 * context_frames
    if step < 1:
        raise ConfigError(
            f"a window of {window_frames} frames leaves nothing to keep after {context_frames} "
            "frames of context on each side; use a longer window or a shorter overlap"
        )
    plan = []
    keep0, keep1 = 0, window_frames - context_frames
    while True:
        keep1 = min(keep1, num_frames)
        plan.append((max(0, keep0 - context_frames), min(num_frames, keep1 + context_frames),
                     keep0, keep1))
        if keep1 >= num_frames:
            return plan
        keep0, keep1 = keep1, keep1 + step


def stitch(plan, posteriors):
    """Puts the kept centre frames of each window's posteriors back together.

    Arguments
    ---------
    plan : list of tuple
        From :func:`window_plan`.
    posteriors : iterable of torch.Tensor
        One (end - start, V) tensor per window.

    Returns
    -------
    torch.Tensor
        (num_frames, V).

    Example
    -------
    >>> import torch
    >>> full = torch.arange(25.0)[:, None]
    >>> plan = window_plan(25, 10, 2)
    >>> torch.equal(stitch(plan, [full[s:e] for s, e, _, _ in plan]), full)
    True
    """
    kept = []
    for (start, end, k0, k1), post in zip(plan, posteriors):
        if post.shape[0] != end - start:
            raise ValueError(f"window [{start}, {end}) has {post.shape[0]} frames of posteriors")
        kept.append(post[k0 - start:k1 - start])
    return torch.cat(kept, dim=0)
