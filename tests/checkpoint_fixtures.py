"""Checkpoint files written the way old tools wrote them, for the loader and import tests.

* :func:`save_pytorch_vdsr_modern` - pytorch-vdsr's ``torch.save({'epoch', 'model': Net})`` with
  today's torch in the legacy (non-zip) format, protocol 2, the class living in a throwaway
  ``vdsr`` module that is gone again before anything loads the file, and the storages rewritten
  to ``torch.cuda.FloatStorage`` at ``cuda:0`` as on the original training GPU.
* :func:`save_pytorch_vdsr_py2` - the same checkpoint as Python 2 + PyTorch 0.3 wrote it
  (``model_epoch_50.pth``): byte strings, ``torch._utils._rebuild_tensor``, parameters as
  ``Parameter(data)`` + BUILD ``(requires_grad, volatile, hooks)``, ``OrderedDict([[k, v], ...])``,
  ``_backend`` via ``torch.nn.backends.thnn._get_thnn_function_backend``. Written opcode by
  opcode by :class:`Py2Pickler` (today's pickler cannot produce Python-2 strings).
"""
from __future__ import annotations

import importlib
import io
import pickle
import struct
import sys
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

VDSR_SOURCE = '''
import torch.nn as nn
from math import sqrt


class Conv_ReLU_Block(nn.Module):
    def __init__(self, n_feats):
        super(Conv_ReLU_Block, self).__init__()
        self.conv = nn.Conv2d(n_feats, n_feats, kernel_size=3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv(x))


class Net(nn.Module):
    def __init__(self, n_feats=64, n_blocks=18):
        super(Net, self).__init__()
        self.residual_layer = nn.Sequential(*[Conv_ReLU_Block(n_feats) for _ in range(n_blocks)])
        self.input = nn.Conv2d(1, n_feats, kernel_size=3, stride=1, padding=1, bias=False)
        self.output = nn.Conv2d(n_feats, 1, kernel_size=3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, sqrt(2. / n))

    def forward(self, x):
        residual = x
        out = self.relu(self.input(x))
        out = self.residual_layer(out)
        out = self.output(out)
        return out + residual
'''


def save_pytorch_vdsr_modern(path: Path, workdir: Path, n_feats: int = 8, n_blocks: int = 3) -> torch.nn.Module:
    """Writes the checkpoint; returns the pickled ``vdsr.Net`` (still usable, its module gone)."""
    module_dir = workdir / "throwaway_vdsr_module"
    module_dir.mkdir(parents=True, exist_ok=True)
    (module_dir / "vdsr.py").write_text(VDSR_SOURCE)
    sys.path.insert(0, str(module_dir))
    try:
        vdsr = importlib.import_module("vdsr")
        torch.manual_seed(0)
        net = vdsr.Net(n_feats, n_blocks).eval()
        torch.save({"epoch": 50, "model": net}, path, _use_new_zipfile_serialization=False, pickle_protocol=2)
    finally:
        sys.path.remove(str(module_dir))
        sys.modules.pop("vdsr", None)
    (module_dir / "vdsr.py").unlink()  # nothing may import it while the file is loaded
    rewrite_locations_to_cuda(path)
    return net


def rewrite_locations_to_cuda(path: Path) -> None:
    """Storage type ``torch.FloatStorage`` -> ``torch.cuda.FloatStorage``, location 'cpu' ->
    'cuda:0'. Pickles carry no offsets, so growing an opcode's argument is safe; each string is
    memoised, so it occurs once."""
    data = path.read_bytes()
    replacements = {b"ctorch\nFloatStorage\n": b"ctorch.cuda\nFloatStorage\n",
                    b"X\x03\x00\x00\x00cpu": b"X\x06\x00\x00\x00cuda:0"}
    for old, new in replacements.items():
        assert data.count(old) == 1, f"expected one {old!r} in the pickle"
        data = data.replace(old, new)
    path.write_bytes(data)


# --- Python 2 / PyTorch 0.3, opcode by opcode --------------------------------------------------
@dataclass
class Global:
    module: str
    name: str


@dataclass
class Reduce:
    func: Global
    args: tuple
    state: object = None
    has_state: bool = False


@dataclass
class NewObj:
    cls: Global
    state: dict


@dataclass
class PersistentId:
    pid: tuple


class Py2Pickler:
    """Protocol 2 as CPython 2.7 wrote it, for the object model above plus plain values."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def dump(self, obj) -> bytes:
        self.save(obj)
        self.out += b"."
        return bytes(self.out)

    def save(self, obj) -> None:
        out = self.out
        if obj is None:
            out += b"N"
        elif obj is True or obj is False:
            out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                out += b"K" + bytes([obj])
            elif -2**31 <= obj < 2**31:
                out += b"J" + struct.pack("<i", obj)
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                out += b"\x8a" + bytes([len(raw)]) + raw
        elif isinstance(obj, float):
            out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):  # a Python 2 str: bytes on the wire
            raw = obj.encode("latin1")
            out += (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<I", len(raw))) + raw
        elif isinstance(obj, tuple):
            out += b"("
            for item in obj:
                self.save(item)
            out += b"t"
        elif isinstance(obj, list):
            out += b"](" if obj else b"]"
            for item in obj:
                self.save(item)
            out += b"e" if obj else b""
        elif isinstance(obj, dict):
            out += b"}(" if obj else b"}"
            for key, value in obj.items():
                self.save(key)
                self.save(value)
            out += b"u" if obj else b""
        elif isinstance(obj, Global):
            out += f"c{obj.module}\n{obj.name}\n".encode("ascii")
        elif isinstance(obj, Reduce):
            self.save(obj.func)
            self.save(obj.args)
            out += b"R"
            if obj.has_state:
                self.save(obj.state)
                out += b"b"
        elif isinstance(obj, NewObj):
            self.save(obj.cls)
            out += b")\x81"  # EMPTY_TUPLE NEWOBJ: object.__reduce_ex__(2)
            self.save(obj.state)
            out += b"b"
        elif isinstance(obj, PersistentId):
            self.save(obj.pid)
            out += b"Q"
        else:
            raise TypeError(type(obj))


def ordered_dict_py2(items) -> Reduce:
    return Reduce(Global("collections", "OrderedDict"), ([[k, v] for k, v in items],))


class Torch03Writer:
    """Builds the object graph PyTorch 0.3 pickled for a module, collecting its storages."""

    def __init__(self, location: str = "cuda:0"):
        self.location = location
        self.storages: dict[str, torch.Tensor] = {}

    def tensor(self, t: torch.Tensor, size=None, stride=None) -> Reduce:
        key = str(140_000_000 + len(self.storages))  # the storage's _cdata address, as a string
        self.storages[key] = t.detach().contiguous().reshape(-1).float()
        storage = PersistentId(("storage", Global("torch.cuda", "FloatStorage"), key, self.location,
                                t.numel(), None))
        return Reduce(Global("torch._utils", "_rebuild_tensor"),
                      (storage, 0, tuple(size or t.shape), tuple(stride or t.stride())))

    def parameter(self, t: torch.Tensor) -> Reduce:
        hooks = ordered_dict_py2([])
        return Reduce(Global("torch.nn.parameter", "Parameter"), (self.tensor(t),), (True, False, hooks), True)

    def module(self, cls: Global, params: dict, children: dict, **attrs) -> NewObj:
        state = {
            "_backend": Reduce(Global("torch.nn.backends.thnn", "_get_thnn_function_backend"), ()),
            "_parameters": ordered_dict_py2((k, None if v is None else self.parameter(v)) for k, v in params.items()),
            "_buffers": ordered_dict_py2([]),
            "_backward_hooks": ordered_dict_py2([]),
            "_forward_hooks": ordered_dict_py2([]),
            "_forward_pre_hooks": ordered_dict_py2([]),
            "_modules": ordered_dict_py2(children.items()),
            "training": True,
            **attrs,
        }
        return NewObj(cls, state)

    def conv(self, weight: torch.Tensor) -> NewObj:
        k = weight.shape[-1]
        return self.module(Global("torch.nn.modules.conv", "Conv2d"), {"weight": weight, "bias": None}, {},
                           in_channels=weight.shape[1], out_channels=weight.shape[0], kernel_size=(k, k),
                           stride=(1, 1), padding=(1, 1), dilation=(1, 1), transposed=False,
                           output_padding=(0, 0), groups=1)

    def relu(self) -> NewObj:
        return self.module(Global("torch.nn.modules.activation", "ReLU"), {}, {}, threshold=0, value=0, inplace=True)

    def vdsr_net(self, state: dict) -> NewObj:
        """pytorch-vdsr's ``vdsr.Net`` with the weights of ``state`` (its official keys)."""
        n_blocks = sum(1 for k in state if k.startswith("residual_layer."))
        block = Global("vdsr", "Conv_ReLU_Block")
        blocks = {str(i): self.module(block, {}, {"conv": self.conv(state[f"residual_layer.{i}.conv.weight"]),
                                                  "relu": self.relu()}) for i in range(n_blocks)}
        sequential = self.module(Global("torch.nn.modules.container", "Sequential"), {}, blocks)
        return self.module(Global("vdsr", "Net"), {}, {
            "residual_layer": sequential, "input": self.conv(state["input.weight"]),
            "output": self.conv(state["output.weight"]), "relu": self.relu(),
        })


def legacy_file_bytes(main_object, storages: dict[str, torch.Tensor]) -> bytes:
    """torch's legacy layout: magic, protocol, sys_info, the main pickle, the storage keys, then
    each storage as int64 element count + little-endian data."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    parts = [Py2Pickler().dump(0x1950A86A20F9469CFC6C), Py2Pickler().dump(1001), Py2Pickler().dump(sys_info),
             Py2Pickler().dump(main_object), Py2Pickler().dump(sorted(storages))]
    for key in sorted(storages):
        data = storages[key]
        parts.append(struct.pack("<q", data.numel()) + data.numpy().astype("<f4").tobytes())
    return b"".join(parts)


def save_pytorch_vdsr_py2(path: Path, state: dict) -> None:
    """``{'epoch': 50, 'model': vdsr.Net}`` as Python 2.7 + PyTorch 0.3 saved it."""
    writer = Torch03Writer()
    main = {"epoch": 50, "model": writer.vdsr_net(state)}
    path.write_bytes(legacy_file_bytes(main, writer.storages))


def tiny_vdsr_state(n_feats: int = 8, n_blocks: int = 3, seed: int = 0) -> dict:
    """Random weights under pytorch-vdsr's keys (no biases)."""
    g = torch.Generator().manual_seed(seed)
    state = {"input.weight": torch.randn(n_feats, 1, 3, 3, generator=g) * 0.3}
    for i in range(n_blocks):
        state[f"residual_layer.{i}.conv.weight"] = torch.randn(n_feats, n_feats, 3, 3, generator=g) * 0.15
    state["output.weight"] = torch.randn(1, n_feats, 3, 3, generator=g) * 0.15
    return state


# --- a zip bomb in PyTorch's zip layout --------------------------------------------------------
def deflated_zeros(nbytes: int, chunk: int = 1 << 20) -> tuple[bytes, int]:
    """A raw deflate stream of ``nbytes`` zeros and its CRC-32, without compressing them all:
    one chunk ends in a full flush (byte-aligned, no back-references across it), so copies of it
    can be concatenated; an empty final block closes the stream."""
    assert nbytes % chunk == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = block * (nbytes // chunk) + compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(nbytes // chunk):
        crc = zlib.crc32(bytes(chunk), crc)
    return stream, crc


@dataclass
class ZipEntry:
    """One archive member as written: ``data`` are the bytes on disk (already deflated when
    ``method`` is ZIP_DEFLATED); ``crc``/``size`` describe the expanded content, and
    ``claimed_stored`` can forge the stored length the headers give."""
    name: str
    data: bytes
    method: int = zipfile.ZIP_STORED
    crc: int | None = None
    size: int | None = None
    claimed_stored: int | None = None

    def header_fields(self) -> tuple[int, int, int, int]:
        size = len(self.data) if self.size is None else self.size
        crc = zlib.crc32(self.data) if self.crc is None else self.crc
        stored = len(self.data) if self.claimed_stored is None else self.claimed_stored
        return self.method, crc, stored, size


def write_zip(path: Path, entries: list[ZipEntry]) -> None:
    """A zip written header by header (zipfile only writes entries it compressed itself, with
    honest sizes)."""
    body, directory = bytearray(), bytearray()
    for entry in entries:
        raw = entry.name.encode()
        method, crc, stored, size = entry.header_fields()
        offset = len(body)
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, stored, size, len(raw), 0)
        body += raw + entry.data
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, stored, size,
                                 len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), len(body), 0)
    path.write_bytes(bytes(body + directory + end))


def torch_zip(path: Path, numel: int, storage: ZipEntry) -> None:
    """A PyTorch zip checkpoint ``{"weight": float32 tensor of numel}`` around the given
    ``archive/data/0`` entry."""
    write_zip(path, [ZipEntry("archive/data.pkl", torch_zip_pickle(numel)), ZipEntry("archive/byteorder", b"little"),
                     storage, ZipEntry("archive/version", b"3\n")])


class _StorageRef:
    """Pickled as PyTorch's persistent id for storage "0" (see ``torch_zip_pickle``)."""


class _Tensor:
    def __init__(self, numel: int):
        self.numel = numel

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_StorageRef(), 0, (self.numel,), (1,), False, OrderedDict())


def torch_zip_pickle(numel: int) -> bytes:
    """``data.pkl`` of ``torch.save({"weight": <float32 tensor of numel elements>})``, written
    without the tensor: its storage is named by key, as torch does, and lives in ``data/0``."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, _StorageRef) else None

    out = io.BytesIO()
    Pickler(out, protocol=2).dump({"weight": _Tensor(numel)})
    return out.getvalue()


def save_deflate_bomb(path: Path, expanded_bytes: int = 1 << 30) -> None:
    """A PyTorch zip checkpoint whose one float32 storage (``expanded_bytes``, zeros) is stored
    deflated: about 1 MB on disk per GiB that a plain ``torch.load`` inflates into memory."""
    stream, crc = deflated_zeros(expanded_bytes)
    torch_zip(path, expanded_bytes // 4, ZipEntry("archive/data/0", stream, zipfile.ZIP_DEFLATED, crc, expanded_bytes))
