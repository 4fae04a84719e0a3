"""Exceptions raised on bad input.

Every message names the offending file (or setting) and says how to fix it.

Example
-------
>>> err = DataError("corpus/train.csv", "column 'wav' is missing", "re-run cald-prepare")
>>> print(err)
corpus/train.csv: column 'wav' is missing (fix: re-run cald-prepare)
>>> isinstance(err, ValueError)
True
"""


class CaldError(Exception):
    """Base class of the errors this package raises on purpose."""


class DataError(CaldError, ValueError):
    """A file or folder that cannot be used as it is.

    Arguments
    ---------
    path : str or os.PathLike
        The file or folder at fault.
    problem : str
        What is wrong with it.
    fix : str, optional
        What the user can do about it.
    """

    def __init__(self, path, problem, fix=None):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class AudioError(DataError):
    """An audio file that is missing, unreadable, empty or otherwise unusable."""


class ConfigError(CaldError, ValueError):
    """A setting (argument, YAML value) that cannot work."""


class ToolError(CaldError, RuntimeError):
    """A required external program is missing or failed."""


class NumericalError(CaldError, RuntimeError):
    """Training cannot go on: the loss or the gradients stay non-finite."""
