"""Progress bars of long inputs: tqdm when asked for, a silent stand-in otherwise.

Example
-------
>>> bar = progress_bar(False, 10, "CNN", "block")
>>> bar.update(3); bar.close()
"""

#: Audio longer than this shows progress bars by default (when stderr is a terminal).
PROGRESS_AFTER_S = 60.0


class NoProgress:
    """A progress bar that shows nothing."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def progress_bar(show, total, desc, unit):
    """A tqdm bar of ``total`` steps, or :class:`NoProgress`.

    ``show=None`` shows it only when stderr is a terminal (tqdm's own rule); ``False``
    or ``total <= 0`` never.
    """
    if not show or total <= 0:
        return NoProgress()
    from tqdm import tqdm

    # show=None: only when stderr is a terminal (tqdm's own rule)
    return tqdm(total=total, desc=desc, unit=unit, disable=None if show is None else False,
                leave=False)
