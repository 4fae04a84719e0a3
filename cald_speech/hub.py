"""Hugging Face hub ids as model sources, resolved through the local cache only.

Wherever a model folder is accepted, a hub id such as ``facebook/wav2vec2-base-960h``
(optionally ``org/name@revision``: a branch, tag or commit) names the snapshot folder of
that model in the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
else ``~/.cache/huggingface/hub``; read at each call). Nothing here touches the network
(``local_files_only=True``; ``HF_HUB_OFFLINE`` is not needed): a model that is not cached
fails at once with a one-line :class:`~cald_speech.errors.DataError` naming the cache
folder it looked in, the download command and, for a typo, the cached ids it resembles.

A path that exists always wins over a hub id. A missing path that is no hub id
(``/tmp/missing``, ``./teacher``) comes back unchanged, for the caller's own "no such
model folder" check; one of hub shape (``runs/teacher``) is looked up in the cache.
A leaf module: it imports only :mod:`cald_speech.errors` and huggingface_hub.

Example
-------
>>> import os, tempfile
>>> from unittest import mock
>>> folder = tempfile.mkdtemp()
>>> resolve_model_source(folder) == Path(folder)
True
>>> with mock.patch.dict(os.environ, {"HF_HUB_CACHE": tempfile.mkdtemp()}):
...     resolve_model_source("facebook/wav2vec2-base-960h")
Traceback (most recent call last):
  ...
cald_speech.errors.DataError: .../models--facebook--wav2vec2-base-960h: model \
'facebook/wav2vec2-base-960h' is neither a local folder nor in the local Hugging Face \
cache (fix: ... `hf download facebook/wav2vec2-base-960h` ...)
>>> split_hub_id("facebook/wav2vec2-base-960h@main"), split_hub_id("runs/x/model")
(('facebook/wav2vec2-base-960h', 'main'), None)
"""

import difflib
import os
import re
from pathlib import Path

from cald_speech.errors import DataError

__all__ = ["cached_repo_ids", "hub_cache_dir", "is_hub_id", "resolve_model_source",
           "split_hub_id"]

#: A revision after ``@``: a branch, tag, ``refs/pr/N`` or a commit hash.
_REVISION = re.compile(r"[\w.\-]+(/[\w.\-]+)*")


def hub_cache_dir():
    """The Hugging Face hub cache folder, from the environment as it is now.

    The same order as huggingface_hub (``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``,
    ``HF_HOME``/hub, ``XDG_CACHE_HOME``/huggingface/hub), but read at every call, not
    once at import; with none of them set, huggingface_hub's own setting.

    Returns
    -------
    pathlib.Path

    Example
    -------
    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_HUB_CACHE": "/data/hf-cache"}):
    ...     str(hub_cache_dir())
    '/data/hf-cache'
    """
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(os.path.expandvars(os.path.expanduser(env[key])))
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(os.path.expanduser(env["HF_HOME"]))) / "hub"
    if env.get("XDG_CACHE_HOME"):
        return Path(os.path.expandvars(os.path.expanduser(env["XDG_CACHE_HOME"]))) / \
            "huggingface" / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def split_hub_id(source):
    """``(repo_id, revision or None)`` if ``source`` has the shape of a hub id, else None.

    A hub id is ``org/name`` as huggingface_hub validates it (letters, digits, ``-_.``,
    no ``--`` or ``..``), optionally followed by ``@revision``. Bare names (``gpt2``)
    are not taken as hub ids: they are far likelier to be a mistyped local folder.

    Example
    -------
    >>> split_hub_id("facebook/hubert-large-ls960-ft@refs/pr/3")
    ('facebook/hubert-large-ls960-ft', 'refs/pr/3')
    >>> [split_hub_id(s) for s in ("gpt2", "./a/b", "a--b/c", "/abs/path", "a/b@")]
    [None, None, None, None, None]
    """
    if not isinstance(source, (str, os.PathLike)):
        return None
    text = os.fspath(source)
    repo_id, at, revision = text.partition("@")
    if at and (not _REVISION.fullmatch(revision) or ".." in revision):
        return None
    if repo_id.count("/") != 1:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id, (revision or None)


def is_hub_id(source):
    """Whether ``source`` has the shape of a hub id (see :func:`split_hub_id`).

    Example
    -------
    >>> is_hub_id("facebook/wav2vec2-base-960h"), is_hub_id("/models/teacher")
    (True, False)
    """
    return split_hub_id(source) is not None


def cached_repo_ids(cache_dir=None):
    """The model ids held in the hub cache ``cache_dir`` (default :func:`hub_cache_dir`).

    Example
    -------
    >>> import tempfile
    >>> cache = Path(tempfile.mkdtemp())
    >>> (cache / "models--facebook--wav2vec2-base").mkdir()
    >>> (cache / "datasets--org--corpus").mkdir()
    >>> cached_repo_ids(cache)
    ['facebook/wav2vec2-base']
    """
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    try:
        names = sorted(p.name for p in cache.iterdir() if p.is_dir())
    except OSError:
        return []
    return ["/".join(name.split("--")[1:]) for name in names if name.startswith("models--")]


def _env_hint(cache):
    """How to point a download at ``cache``: the variable that names it."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return f"HF_HUB_CACHE={cache}"
    return f"HF_HOME={cache.parent}"


def _not_cached(source, what, repo_id, revision, cache, detail=None):
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    if detail is None:
        if folder.is_dir() and revision:
            detail = f"is in the local Hugging Face cache, but not at revision '{revision}'"
        else:
            detail = "is neither a local folder nor in the local Hugging Face cache"
    problem = f"{what} '{source}' {detail}"
    others = [r for r in cached_repo_ids(cache) if r != repo_id]
    near = difflib.get_close_matches(repo_id, others, n=3, cutoff=0.6)
    if near:
        problem += "; did you mean " + ", ".join(f"'{r}'" for r in near) + "?"
    rev = f" --revision {revision}" if revision else ""
    fix = (f"on a machine with network run `hf download {repo_id}{rev}` (older "
           f"huggingface_hub: `huggingface-cli download {repo_id}{rev}`) with "
           f"{_env_hint(cache)} and bring that cache here, or give a local model folder")
    return DataError(folder, problem, fix)


def resolve_model_source(source, what="model"):
    """The local folder of a model source: an existing path, or a cached hub id.

    Arguments
    ---------
    source : str or os.PathLike
        A model folder, or a hub id ``org/name`` / ``org/name@revision``.
    what : str
        What the source is, for the error message (``"model"``, ``"teacher"``, ...).

    Returns
    -------
    pathlib.Path
        ``Path(source)`` when that path exists (it always wins) or when ``source`` is
        no hub id (the caller's own check reports a missing folder); otherwise the
        snapshot folder of the hub id in the local cache
        (``<cache>/models--org--name/snapshots/<commit>``).

    Raises
    ------
    DataError
        A hub id that is not in the local cache (or only an incomplete snapshot of
        it): names the cache folder, the download command and cached near matches.
        Never waits on the network.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> resolve_model_source(folder) == folder, resolve_model_source("/no/such/dir")
    (True, PosixPath('/no/such/dir'))
    """
    path = Path(source)
    if path.exists():
        return path
    parts = split_hub_id(source)
    if parts is None:
        return path
    repo_id, revision = parts
    cache = hub_cache_dir()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=str(cache),
                                   local_files_only=True)
    except IncompleteSnapshotError as exc:
        missing = re.search(r"\d+ file\(s\) are missing", str(exc))
        detail = missing.group(0) if missing else "files are missing"
        raise _not_cached(source, what, repo_id, revision, cache,
                          f"has an incomplete snapshot in the local Hugging Face cache "
                          f"({detail})") from None
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise _not_cached(source, what, repo_id, revision, cache) from None
    return Path(folder)


def source_record(source):
    """How a run records a model source: a hub id as given, a path made absolute.

    Example
    -------
    >>> source_record("facebook/no-such-model-here"), source_record("/tmp/x/../y")
    ('facebook/no-such-model-here', '/tmp/y')
    """
    text = os.fspath(source)
    if is_hub_id(text) and not os.path.exists(text):
        return text
    return os.path.abspath(text)
