"""Finding, verifying and loading pretrained weight files supplied by the user.

Why this module exists:

* The official SuperPoint and SuperGlue weights (Magic Leap) are under a
  non-commercial licence, so glueloc neither ships nor downloads them: the user puts
  the files in a directory, and every failure to find one says exactly which file is
  needed, where it goes and where it comes from.
* A file with the right name is not necessarily the right file. Upstream keeps the
  weights in git, so their *git blob ids* are public and anyone can check a copy with
  ``git hash-object FILE``; we compute the same id in Python and refuse a file that
  differs, unless the caller opts out (fine-tuned weights).
* Loading is strict: a missing key, an unexpected key or a shape mismatch would
  otherwise leave part of a network randomly initialised, which gives plausible but
  wrong matches. Every such problem becomes a one-line :class:`GluelocError` naming
  the offending keys.
* Files are read with ``torch.load(..., weights_only=True)``: a ``.pth`` file is a
  pickle, and a weights-only load cannot execute code hidden in it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch

from glueloc.errors import GluelocError

logger = logging.getLogger(__name__)

#: Environment variable naming the directory that holds weight files.
WEIGHTS_DIR_ENV = "GLUELOC_WEIGHTS_DIR"
#: Used when the environment variable is unset (``~`` is expanded at lookup time).
DEFAULT_WEIGHTS_DIR = "~/.cache/glueloc/weights"

_UPSTREAM = "magicleap/SuperGluePretrainedNetwork on GitHub"
_UPSTREAM_URL = "https://github.com/magicleap/SuperGluePretrainedNetwork"
_UPSTREAM_LICENCE = "Magic Leap non-commercial licence (academic/non-commercial use only)"

# Keys whose absence is tolerated: PyTorch < 0.4.1 did not save this BatchNorm counter,
# and it only matters for training with momentum=None, never for inference.
_OPTIONAL_KEY_SUFFIX = ".num_batches_tracked"

# How many offending keys an error message lists before it says "and N more".
_MAX_LISTED = 8

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    """A weight file glueloc knows: its name, upstream identity and origin."""

    filename: str
    git_blob: str  # `git hash-object` of the official file
    source: str  # where a user obtains it, for error messages
    licence: str


def _official(filename: str, git_blob: str) -> WeightFile:
    return WeightFile(
        filename=filename,
        git_blob=git_blob,
        source=f"{_UPSTREAM} ({_UPSTREAM_URL}), file models/weights/{filename}",
        licence=_UPSTREAM_LICENCE,
    )


#: The official Magic Leap files, by file name (read-only).
OFFICIAL_WEIGHTS: Mapping[str, WeightFile] = MappingProxyType(
    {
        "superpoint_v1.pth": _official("superpoint_v1.pth", "107a444ca318d487390137d619d49f2f0a3b1ad8"),
        "superglue_outdoor.pth": _official("superglue_outdoor.pth", "5ca3392bd5349790d7bc1c246961fc041b88c1e8"),
        "superglue_indoor.pth": _official("superglue_indoor.pth", "2b54532f1b7321505cac79ee3a2863ef2ab2d163"),
    }
)


def git_blob_id(path: str | os.PathLike[str]) -> str:
    """The id ``git hash-object PATH`` prints: sha1 of ``b"blob <size>\\0" + content``."""
    path = Path(path)
    digest = hashlib.sha1()
    digest.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_dir() -> Path:
    """The directory searched for weight files: ``$GLUELOC_WEIGHTS_DIR`` or the cache default."""
    configured = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(configured or DEFAULT_WEIGHTS_DIR).expanduser()


def _where_from(filename: str) -> str:
    known = OFFICIAL_WEIGHTS.get(filename)
    if known is None:
        return "glueloc does not know where this file comes from and never downloads weights"
    return f"obtain it from {known.source} under the {known.licence}; glueloc never downloads weights"


def find_weights(filename: str, explicit_path: str | os.PathLike[str] | None = None) -> Path:
    """Locate a weight file: ``explicit_path`` if given, else ``weights_dir() / filename``.

    Raises a :class:`GluelocError` naming the file, where to put it and where it comes
    from when it is missing.
    """
    if explicit_path is not None:
        path = Path(explicit_path).expanduser()
        if not path.is_file():
            raise GluelocError(f"weight file {path} (expected {filename}) does not exist; {_where_from(filename)}")
        return path
    directory = weights_dir()
    path = directory / filename
    if not path.is_file():
        raise GluelocError(
            f"weight file {filename} is missing: put it at {path} "
            f"(or point ${WEIGHTS_DIR_ENV} at the directory holding it); {_where_from(filename)}"
        )
    return path


def verify_git_blob(path: str | os.PathLike[str], expected_git_blob: str) -> None:
    """Raise a :class:`GluelocError` unless ``path``'s git blob id is ``expected_git_blob``."""
    expected_git_blob = expected_git_blob.lower()
    actual = git_blob_id(path)
    if actual != expected_git_blob:
        official = next((w.filename for w in OFFICIAL_WEIGHTS.values() if w.git_blob == expected_git_blob), None)
        what = f"the official {official}" if official else f"the expected file (git blob {expected_git_blob})"
        raise GluelocError(
            f"weight file {path} is not {what}: its git blob id is {actual}, expected {expected_git_blob} "
            "(a corrupt or different download?); for fine-tuned weights, disable the check "
            "(conf verify_weights=False, or expected_git_blob=None)"
        )


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f" and {len(items) - _MAX_LISTED} more"
    return shown


def read_state_dict(path: str | os.PathLike[str]) -> OrderedDict[str, torch.Tensor]:
    """Read a state dict with a weights-only (code-free) unpickler onto the CPU."""
    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights-only errors come as many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GluelocError(f"weight file {path} is not a readable PyTorch state dict: {reason}") from exc
    if not isinstance(loaded, Mapping):
        raise GluelocError(f"weight file {path} holds a {type(loaded).__name__}, not a state dict")
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise GluelocError(f"weight file {path} is not a plain state dict: non-tensor entries {_listing(bad)}")
    state: OrderedDict[str, torch.Tensor] = OrderedDict(loaded)
    metadata = getattr(loaded, "_metadata", None)
    if metadata is not None:
        state._metadata = metadata  # type: ignore[attr-defined]  # module versions for load_state_dict
    return state


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Raise a :class:`GluelocError` listing every key ``state`` lacks, adds or shapes wrongly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_KEY_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_listing(wrong_shape)}")
    if problems:
        raise GluelocError(f"{origin} does not fit {type(model).__name__}: " + "; ".join(problems))


def load_weights(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    expected_git_blob: str | None = None,
) -> None:
    """Load the state dict in ``path`` into ``model`` strictly.

    ``expected_git_blob``: when given, the file must have this git blob id (see
    :data:`OFFICIAL_WEIGHTS`); pass ``None`` for fine-tuned or home-made weights.
    Any missing key, unexpected key or shape mismatch raises a :class:`GluelocError`
    naming the keys. A missing ``*.num_batches_tracked`` BatchNorm counter (files
    saved by PyTorch < 0.4.1) is filled with 0, which is what PyTorch itself does.
    """
    path = Path(path)
    if expected_git_blob is not None:
        verify_git_blob(path, expected_git_blob)
    state = read_state_dict(path)
    check_state_dict(model, state, f"weight file {path}")
    for key, value in model.state_dict().items():
        if key not in state and key.endswith(_OPTIONAL_KEY_SUFFIX):
            state[key] = torch.zeros_like(value, device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # backstop: check_state_dict should have caught it
        message = " ".join(str(exc).split())
        raise GluelocError(f"weight file {path} does not fit {type(model).__name__}: {message}") from exc
    logger.info("loaded %s weights from %s", type(model).__name__, path)
