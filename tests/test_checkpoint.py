"""Safe checkpoint loading: formats, unwrapping, pickled modules, refused pickles, corrupt files."""
from __future__ import annotations

import os
import pickle
import random
import re
import sys
import tarfile
import tracemalloc
import zipfile

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from checkpoint_fixtures import (
    Global, Torch03Writer, ZipEntry, legacy_file_bytes, save_deflate_bomb, save_pytorch_vdsr_modern,
    save_pytorch_vdsr_py2, tiny_vdsr_state, torch_zip,
)
from srserve.models.checkpoint import CheckpointError, RefusedPickle, load_checkpoint, read_zip_restricted
from srserve.models.registry import load_network


def random_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g),
            "steps": torch.tensor(7, dtype=torch.int64), "half": torch.randn(5, generator=g).half()}


def assert_same_state(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key
        assert type(actual[key]) is torch.Tensor  # no Parameter, no view of a shared storage


class TinyModule(nn.Module):
    """Parameters, a child, BN buffers and a non-persistent buffer (absent from state_dict)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.register_buffer("scratch", torch.ones(2), persistent=False)


def tiny_module() -> TinyModule:
    torch.manual_seed(1)
    net = TinyModule()
    net.body[1].running_mean.normal_()
    net.body[1].num_batches_tracked += 3
    net.conv.weight.note = "pickled via _rebuild_parameter_with_state"
    net.body[1].running_mean.note = "pickled via _rebuild_from_type_v2"
    return net


# --- formats -------------------------------------------------------------------------------
def test_safetensors_loads_directly(tmp_path):
    state = random_state()
    save_file(state, str(tmp_path / "w.safetensors"))
    assert_same_state(load_checkpoint(tmp_path / "w.safetensors"), state)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_plain_torch_state_dict(tmp_path, zip_format):
    state = random_state()
    torch.save(state, tmp_path / "w.pth", _use_new_zipfile_serialization=zip_format)
    assert_same_state(load_checkpoint(tmp_path / "w.pth"), state)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's own, from the check below
@pytest.mark.parametrize("zip_format,protocol", [(True, 2), (True, 4), (False, 1), (False, 2), (False, 4)])
def test_pickled_module_object(tmp_path, zip_format, protocol):
    """torch.load(weights_only=True) refuses a pickled module; the restricted unpickler reads its
    parameters and persistent buffers, for every pickle protocol (1 uses copyreg._reconstructor)."""
    net = tiny_module()
    path = tmp_path / "m.pth"
    torch.save({"epoch": 3, "model": net}, path, _use_new_zipfile_serialization=zip_format, pickle_protocol=protocol)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # so this really exercises the fallback
    state = load_checkpoint(path)
    assert list(state) == list(net.state_dict())  # state_dict order, no 'scratch', no 'epoch'
    assert_same_state(state, net.state_dict())


def test_pytorch_vdsr_saved_by_todays_torch_with_cuda_storages(tmp_path):
    """pytorch-vdsr's {'epoch', 'model': vdsr.Net} in the legacy format, protocol 2, CUDA storages,
    and a class module that cannot be imported when loading."""
    expected = save_pytorch_vdsr_modern(tmp_path / "model_epoch_50.pth", tmp_path).state_dict()
    raw = (tmp_path / "model_epoch_50.pth").read_bytes()
    assert b"torch.cuda\nFloatStorage" in raw and b"cuda:0" in raw and b"vdsr\nNet" in raw
    state = load_checkpoint(tmp_path / "model_epoch_50.pth")
    assert "vdsr" not in sys.modules
    assert_same_state(state, expected)
    arch, hparams, _ = load_network(state)
    assert (arch, hparams["num_layers"], hparams["n_feats"]) == ("vdsr", 5, 8)


def test_pytorch_vdsr_as_python2_and_torch03_wrote_it(tmp_path):
    state = tiny_vdsr_state()
    save_pytorch_vdsr_py2(tmp_path / "model_epoch_50.pth", state)
    raw = (tmp_path / "model_epoch_50.pth").read_bytes()
    assert b"U\x05epoch" in raw and b"_rebuild_tensor\n" in raw and b"_get_thnn_function_backend" in raw
    assert_same_state(load_checkpoint(tmp_path / "model_epoch_50.pth"), state)


# --- unwrapping ----------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", [
    lambda a, b: {"params": a, "params_ema": b},
    lambda a, b: {"params_ema": b, "params": a, "iter": 5},
    lambda a, b: {"state_dict": b, "epoch": 3, "optimizer": {"lr": 0.1}},
    lambda a, b: {"model": b, "epoch": 50},
    lambda a, b: {"net": b},
    lambda a, b: {"generator": b, "discriminator": a},
    lambda a, b: {"state_dict": {"module." + k: v for k, v in b.items()}},
    lambda a, b: {**b, "epoch": 5, "name": "drop me"},
], ids=["basicsr-ema-wins", "ema-first", "state_dict", "model", "net", "generator", "dataparallel", "non-tensors"])
def test_wrappers_prefixes_and_non_tensors_are_removed(tmp_path, wrap):
    a, b = random_state(1), random_state(2)
    torch.save(wrap(a, b), tmp_path / "w.pth")
    assert_same_state(load_checkpoint(tmp_path / "w.pth"), b)


def test_checkpoint_without_tensors_or_not_a_dict(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        load_checkpoint(tmp_path / "empty.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(tmp_path / "list.pth")


# --- refused pickles -----------------------------------------------------------------------
class CreatesFile:
    """Unpickling this runs ``callable(*args)``, which creates ``path``."""

    def __init__(self, how: str, path):
        self.how, self.path = how, str(path)

    def __reduce__(self):
        if self.how == "open":
            return open, (self.path, "w")
        if self.how == "system":
            return os.system, (f"touch {self.path}",)
        return eval, (f"open({self.path!r}, 'w')",)


CALLEE = {"open": "io.open", "system": "posix.system", "eval": "builtins.eval"}


def write_payload(path, container: str, payload) -> None:
    obj = {"payload": payload, "weight": torch.zeros(2)}  # the payload's REDUCE comes first
    if container == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=container == "zip")


@pytest.mark.parametrize("how", ["open", "system", "eval"])
@pytest.mark.parametrize("container", ["pickle", "legacy", "zip"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container, how):
    # the payload is real: a plain unpickle of it does create its file
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(CreatesFile(how, proof)))
    assert proof.exists()

    target = tmp_path / "pwned"
    write_payload(tmp_path / "evil.pth", container, CreatesFile(how, target))
    with pytest.raises(RefusedPickle) as info:
        load_checkpoint(tmp_path / "evil.pth")
    assert not target.exists()
    message = str(info.value)
    assert CALLEE[how] in message and "\n" not in message and message.startswith("evil.pth: ")


def test_calling_a_module_class_is_refused(tmp_path):
    """Module classes may be constructed inertly (NEWOBJ) but not called (REDUCE)."""

    class BuildsLinear:
        def __reduce__(self):
            return nn.Linear, (2, 2)

    torch.save({"model": BuildsLinear()}, tmp_path / "m.pth")
    with pytest.raises(RefusedPickle, match="torch.nn.modules.linear.Linear"):
        load_checkpoint(tmp_path / "m.pth")


def forged_legacy_file(path, tensor_size=None, storage_numel=None) -> None:
    """A legacy file with one module whose weight has a forged size or storage length."""
    writer = Torch03Writer()
    weight = writer.tensor(torch.ones(4), size=tensor_size)
    if storage_numel is not None:
        storage = weight.args[0]
        storage.pid = (*storage.pid[:4], storage_numel, None)
    model = writer.module(Global("somewhere", "Net"), {}, {})
    model.state["_parameters"].args[0].append(["weight", weight])
    path.write_bytes(legacy_file_bytes({"model": model}, writer.storages))


def test_forged_tensor_size_and_storage_length_are_caught(tmp_path):
    forged_legacy_file(tmp_path / "ok.pth")
    assert torch.equal(load_checkpoint(tmp_path / "ok.pth")["weight"], torch.ones(4))  # the forger itself works
    forged_legacy_file(tmp_path / "big.pth", tensor_size=(1000,))
    with pytest.raises(CheckpointError, match="reaches past its storage"):
        load_checkpoint(tmp_path / "big.pth")
    forged_legacy_file(tmp_path / "huge.pth", storage_numel=10**12)
    with pytest.raises(CheckpointError, match="more bytes than the file"):
        load_checkpoint(tmp_path / "huge.pth")


# --- zip bombs: refused from the central directory, before anything is inflated -------------
GiB = 1 << 30
PEAK_BYTES = 16 << 20  # Python allocations while refusing; inflating the bomb would need 1 GiB


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.pt"
    save_deflate_bomb(path, GiB)
    return path


def test_the_bomb_is_small_on_disk_and_a_valid_torch_zip(bomb, tmp_path):
    assert bomb.stat().st_size < 1.1e6
    with zipfile.ZipFile(bomb) as zf:
        info = zf.getinfo("archive/data/0")
        assert (info.compress_type, info.file_size) == (zipfile.ZIP_DEFLATED, GiB)
        with zf.open(info) as entry:
            assert entry.read(1 << 20) == bytes(1 << 20)  # really a deflate stream of zeros
    save_deflate_bomb(tmp_path / "small.pt", 16 << 20)  # the same layout, 16 MiB: plain torch.load inflates it
    assert torch.equal(torch.load(tmp_path / "small.pt", weights_only=True)["weight"], torch.zeros(4 << 20))


def refused_without_inflating(load) -> str:
    """Runs ``load``, which must raise CheckpointError with Python allocations well under 1 GiB."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            load()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{peak} bytes allocated while refusing"
    message = str(info.value)
    assert "\n" not in message
    return message


def test_deflated_storage_bomb_is_refused_before_torch_load(bomb, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(args))
    message = refused_without_inflating(lambda: load_checkpoint(bomb))
    assert calls == []  # torch.load never saw the file
    assert message.startswith("bomb.pt: archive entry archive/data/0 is compressed")


def test_restricted_reader_refuses_the_bomb_by_the_same_check(bomb):
    with open(bomb, "rb") as f:
        message = refused_without_inflating(lambda: read_zip_restricted(f, bomb.stat().st_size))
    assert message.startswith("archive entry archive/data/0 is compressed")


def test_rezipped_checkpoint_with_deflated_entries_is_refused_with_the_reason(tmp_path):
    """A real checkpoint re-packed by a zip tool (every entry deflated): refused, saying why."""
    torch.save(random_state(), tmp_path / "w.pth")
    with zipfile.ZipFile(tmp_path / "w.pth") as original, \
            zipfile.ZipFile(tmp_path / "rezipped.pth", "w", zipfile.ZIP_DEFLATED) as rezipped:
        for info in original.infolist():
            rezipped.writestr(info.filename, original.read(info))
    with pytest.raises(CheckpointError, match="compressed .*store entries uncompressed"):
        load_checkpoint(tmp_path / "rezipped.pth")


@pytest.mark.parametrize("forged,match", [
    ({"size": GiB}, "claims 1073741824 bytes but stores 4096"),  # expanded size != stored size
    ({"size": GiB, "claimed_stored": GiB}, r"claim more bytes \(1073742\d{3}\) than the file holds \(4\d{3}\)"),
])
def test_stored_entries_claiming_more_than_the_file_are_refused(tmp_path, monkeypatch, forged, match):
    torch_zip(tmp_path / "forged.pt", GiB // 4, ZipEntry("archive/data/0", bytes(4096), **forged))
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("torch.load was called"))
    assert re.search(match, refused_without_inflating(lambda: load_checkpoint(tmp_path / "forged.pt")))


# --- missing, truncated, corrupt, unsupported ------------------------------------------------
def truncated(path, keep: float = 0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_zip(p):
    torch.save(random_state(), p)


def make_legacy(p):
    torch.save(random_state(), p, _use_new_zipfile_serialization=False)


def make_safetensors(p):
    save_file(random_state(), str(p))


def make_vdsr_py2(p):
    save_pytorch_vdsr_py2(p, tiny_vdsr_state())


@pytest.mark.parametrize("make", [make_zip, make_legacy, make_safetensors, make_vdsr_py2])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_files_give_one_line_errors(tmp_path, make, keep):
    path = tmp_path / "w.pth"
    make(path)
    load_checkpoint(path)  # intact, it loads
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(truncated(path, keep))
    assert "\n" not in str(info.value) and str(info.value).startswith("w.pth: ")


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (random.Random(0).randbytes(64), "unknown format|corrupt"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "unknown format"),
    (b"\x80\x02}q\x00(X\x01\x00\x00\x00a", "corrupt"),
])
def test_garbage_files(tmp_path, content, match):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "x.pt")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_pre_0_4_tar_format_is_reported_as_unsupported(tmp_path):
    (tmp_path / "pickle").write_bytes(b"x")
    with tarfile.open(tmp_path / "old.pth", "w") as tar:
        tar.add(tmp_path / "pickle", arcname="pickle")
    with pytest.raises(CheckpointError, match="tar format"):
        load_checkpoint(tmp_path / "old.pth")
