"""Safe loading of user checkpoints into a flat, wrapper-free ``{name: tensor}`` state dict.

Formats, recognised from the bytes (not the file name):

* safetensors -> ``safetensors.torch.load_file``.
* PyTorch zip (torch >= 1.6) and legacy non-zip (< 1.6) files -> ``torch.load(weights_only=True)``
  (a zip only after :func:`check_zip_entries` passed its central directory: no compressed entry,
  nothing that expands beyond the file's own size);
  when that refuses (pickled module objects, e.g. pytorch-vdsr's Python-2 ``model_epoch_50.pth``
  with CUDA storages), our own restricted unpickler below.
* A bare pickle -> the restricted unpickler (it can hold no tensors, but a malicious one must be
  refused, not run).
* PyTorch's pre-0.4 tar format -> refused as unsupported.

The restricted unpickler never imports or calls anything a file names. Tensors, storages and plain
containers are rebuilt by the functions in ``SAFE_CALLS``; every other global becomes an inert
stub class (:class:`PickledObject`) that may be *constructed* (NEWOBJ, ``copyreg._reconstructor``)
and given state (BUILD, which only records it) but never *called*: a REDUCE on anything outside
``SAFE_CALLS`` (``os.system``, ``builtins.eval``, a module class...) is refused, naming the global.
Parameters and buffers are then read out of the stubbed module objects (``_parameters``,
``_buffers``, ``_modules`` -> dotted names). Architecture-specific key layouts are not handled here
but by ``ArchSpec.convert`` (see ``registry.load_network``).
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import SRError

# torch.serialization's legacy-format header (stable since 2017; copied so a torch upgrade that
# drops the private names cannot break reading old files)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# unwrapping order: BasicSR's EMA weights beat its raw ones; then the usual trainer wrappers
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator")

STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
FORMAT_NAMES = {"safetensors": "safetensors", "torch-zip": "PyTorch zip", "pickle": "PyTorch legacy or pickle"}
STORAGE_MODULES = ("torch", "torch.cuda")  # the location (cpu, cuda:0...) is ignored: always CPU


class CheckpointError(SRError):
    """A checkpoint that cannot be read: missing, truncated/corrupt, unknown format or refused."""


class RefusedPickle(CheckpointError):
    """The pickle would call something other than the tensor and container rebuilders."""


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads any supported checkpoint file and returns its weights as a flat state dict."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        return extract_state_dict(read_checkpoint(path))
    except CheckpointError as exc:
        raise type(exc)(f"{path.name}: {exc}") from None
    except OSError as exc:  # unreadable (permissions, I/O error)
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_checkpoint(path: Path) -> Any:
    """The object stored in ``path`` (dicts, tensors, :class:`PickledObject` stand-ins)."""
    fmt = sniff_format(path)
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if fmt == "torch-zip":
            with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
                check_zip_entries(zf, path.stat().st_size)  # before torch.load inflates anything
            return read_torch_file(path, read_zip_restricted)
        return read_pickle_file(path)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt bytes surface as any exception type, from torch or pickle
        raise CheckpointError(f"truncated or corrupt {FORMAT_NAMES[fmt]} file ({one_line(exc)})") from None


def sniff_format(path: Path) -> str:
    """``safetensors``, ``torch-zip`` or ``pickle`` (legacy torch files are pickle streams)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise CheckpointError("file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise CheckpointError("PyTorch's pre-0.4 tar format is not supported; re-save the state_dict "
                              "with a current PyTorch")
    if head[0] == pickle.PROTO[0] or head[:1] in (b"(", b"}", b"]", b"L"):  # protocol 2+, or 0/1
        return "pickle"
    raise CheckpointError(f"unknown format (not safetensors, a PyTorch file or a pickle; first bytes "
                          f"{head[:8].hex()})")


def read_torch_file(path: Path, restricted: Callable[[BinaryIO, int], Any]) -> Any:
    """``torch.load(weights_only=True)``; our restricted unpickler where that refuses."""
    try:
        with warnings.catch_warnings():  # protocol-4 files load fine; torch warns that they might not
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        pass  # a pickled module object or an unusual global: read it ourselves, still safely
    with open(path, "rb") as f:
        return restricted(f, path.stat().st_size)


def read_pickle_file(path: Path) -> Any:
    """A legacy torch file starts with a pickled magic number; anything else is a bare pickle,
    whose (restricted) first object is the content."""
    with open(path, "rb") as f:
        first = RestrictedUnpickler(f).load()
    if isinstance(first, int) and first == LEGACY_MAGIC:
        return read_torch_file(path, read_legacy_restricted)
    return first


def one_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run on for several lines)."""
    text = str(exc).strip().splitlines()
    first = text[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
    return first[:200]


# --- the restricted unpickler ----------------------------------------------------------------
class PickledObject:
    """Inert stand-in for an instance of a class named in a pickle (e.g. ``vdsr.Net``).

    Instances are made only by the unpickler (``object.__new__``); ``state`` holds what BUILD
    gave it and ``args`` the NEWOBJ arguments. ``__slots__`` keeps BUILD from planting attributes
    that later opcodes (APPENDS calls ``.extend``) could pick up.
    """

    __slots__ = ("state", "args")
    qualified_name = "object"

    def __init__(self, *args, **kwargs):
        raise RefusedPickle(f"refusing to call {self.qualified_name}")

    def __repr__(self) -> str:
        return f"<pickled {self.qualified_name}>"


def is_stub_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, PickledObject)


def new_stub(cls: Any, args: Any = ()) -> PickledObject:
    """NEWOBJ / ``copyreg.__newobj__`` / ``_reconstructor``: an inert instance, nothing runs."""
    if not is_stub_class(cls):
        raise RefusedPickle(f"refusing to instantiate {describe(cls)}")
    obj = object.__new__(cls)
    obj.state, obj.args = None, args
    return obj


class StorageType:
    """``torch.FloatStorage``, ``torch.cuda.HalfStorage``...: only its dtype matters."""

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype


class FlatStorage:
    """One storage's elements as a flat CPU tensor; rebuilt tensors are views of it."""

    __slots__ = ("data",)

    def __init__(self, data: torch.Tensor):
        self.data = data


class SafeCall:
    """A callable the pickle may REDUCE; never callable directly, so no other opcode can use it."""

    def __init__(self, name: str, fn: Callable):
        self.name, self.fn = name, fn


def describe(obj: Any) -> str:
    if is_stub_class(obj):
        return obj.qualified_name
    return getattr(obj, "name", None) or type(obj).__name__


def _int_tuple(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in values):
        raise CheckpointError(f"invalid tensor {what} {values!r}")
    return tuple(values)


def rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor(_v2)``: a bounds-checked view of our own flat storage."""
    if not isinstance(storage, FlatStorage):
        raise CheckpointError(f"tensor rebuilt from {describe(storage)}, not a storage")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    (offset,) = _int_tuple((storage_offset,), "offset")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if all(size) and last >= storage.data.numel():
        raise CheckpointError(f"tensor of size {size} reaches past its storage of {storage.data.numel()} elements")
    return storage.data.as_strided(size, stride, offset)


def tensor_of(data: Any, *_ignored: Any) -> torch.Tensor:
    """``Parameter(data, ...)``, ``_rebuild_parameter(data, ...)``, ``Variable(data, ...)``."""
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"parameter holds {describe(data)}, not a tensor")
    return data


def rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    """``_rebuild_from_type_v2``: a tensor carrying Python attributes; rebuilt plain (type and
    attributes dropped), and ``func`` is held to ``SAFE_CALLS`` like any REDUCE."""
    return call(func, args)


def ordered_dict(*args: Any) -> collections.OrderedDict:
    """Python 3 pickles ``OrderedDict()`` then SETITEMS; Python 2 passes ``[[key, value], ...]``."""
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple))):
        raise CheckpointError("malformed OrderedDict")
    return collections.OrderedDict(*args)


def plain_set(items: Any = ()) -> set:
    if not isinstance(items, (list, tuple)):
        raise CheckpointError("malformed set")
    return set(items)


def encode_latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``: how protocol-2 pickles written by Python 3 store ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle("refusing to call _codecs.encode with unexpected arguments")
    return text.encode("latin1")


def reconstructor(cls: Any, base: Any, state: Any = None) -> PickledObject:
    """``copyreg._reconstructor`` (protocols 0 and 1): only ``object`` as the base is inert."""
    if base is not OBJECT or state is not None:
        raise RefusedPickle(f"refusing to reconstruct {describe(cls)} from {describe(base)}")
    return new_stub(cls)


def newobj(cls: Any, *args: Any) -> PickledObject:
    return new_stub(cls, args)


def torch_size(dims: Any) -> tuple[int, ...]:
    return _int_tuple(dims, "size")


class Marker:
    """An inert named value a pickle may reference but never call (``builtins.object``)."""

    def __init__(self, name: str):
        self.name = name


OBJECT = Marker("builtins.object")  # only reconstructor() looks at it
SAFE_CALLS = {
    name: SafeCall(name, fn) for name, fn in {
        "torch._utils._rebuild_tensor": rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": rebuild_tensor,
        "torch._utils._rebuild_parameter": tensor_of,
        "torch._utils._rebuild_parameter_with_state": tensor_of,
        "torch._tensor._rebuild_from_type_v2": rebuild_from_type,
        "torch.nn.parameter.Parameter": tensor_of,
        "torch.autograd.variable.Variable": tensor_of,
        "torch.Size": torch_size,
        "torch.nn.backends.thnn._get_thnn_function_backend": lambda: None,  # old modules' _backend
        "collections.OrderedDict": ordered_dict,
        "builtins.set": plain_set,
        "builtins.frozenset": lambda items=(): frozenset(plain_set(items)),
        "_codecs.encode": encode_latin1,
        "copyreg._reconstructor": reconstructor,
        "copyreg.__newobj__": newobj,
    }.items()
}


class RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler with every opcode that could run code overridden (see module doc).

    ``persistent_load`` resolves PyTorch's ``('storage', ...)``/``('module', ...)`` ids; without it
    a persistent id is refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file, encoding="latin1")  # Python-2 str pickles are bytes of any value
        self._persistent = persistent_load
        self._stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python-2 names (__builtin__, copy_reg), as pickle itself maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in SAFE_CALLS:
            return SAFE_CALLS[full]
        if module in STORAGE_MODULES and name in STORAGE_DTYPES:
            return StorageType(full, STORAGE_DTYPES[name])
        if full == "builtins.object":
            return OBJECT
        if full not in self._stubs:
            self._stubs[full] = type(name, (PickledObject,), {"__slots__": (), "qualified_name": full})
        return self._stubs[full]

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise RefusedPickle("the pickle refers to external data (a persistent id) outside a PyTorch file")
        return self._persistent(pid)

    def get_extension(self, code: int) -> Any:
        raise RefusedPickle(f"refusing copyreg extension code {code}")

    def _instantiate(self, klass: Any, args: list) -> None:  # INST / OBJ (protocols 0 and 1)
        self.append(call(klass, tuple(args)) if args else new_stub(klass))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = new_stub(self.stack[-1], args)

    def load_newobj_ex(self) -> None:
        self.stack.pop()  # kwargs
        args = self.stack.pop()
        self.stack[-1] = new_stub(self.stack[-1], args)

    def load_build(self) -> None:
        """Stubs record their state; on anything else (tensors' requires_grad, an OrderedDict's
        ``_metadata``) it is dropped: no ``__setstate__`` ever runs."""
        state = self.stack.pop()
        if isinstance(self.stack[-1], PickledObject):
            self.stack[-1].state = state

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def call(func: Any, args: Any) -> Any:
    """REDUCE: only the rebuilders in ``SAFE_CALLS`` run."""
    if not isinstance(func, SafeCall):
        raise RefusedPickle(f"refusing to unpickle a call to {describe(func)}: checkpoints may only rebuild "
                            "tensors, storages, containers and module objects")
    if not isinstance(args, tuple):
        raise CheckpointError(f"malformed call to {func.name}")
    return func.fn(*args)


# --- PyTorch containers around the pickle ----------------------------------------------------
class StorageTable:
    """Storages by key, allocated as flat tensors when the pickle first names them.

    ``budget``: bytes the storages may claim in total (the file size), so a forged element count
    cannot make us allocate more memory than the file could fill.
    """

    def __init__(self, budget: int, read_data: Callable[[str, int], bytes] | None = None):
        self.budget = budget
        self.read_data = read_data  # zip: data is at hand; legacy: filled after the pickle
        self.buffers: dict[str, torch.Tensor] = {}

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"unknown persistent id {pid!r}")
        if pid[0] == "module" and len(pid) > 1 and is_stub_class(pid[1]):  # legacy: the module's class
            return pid[1]
        if pid[0] != "storage" or len(pid) not in (5, 6):
            raise CheckpointError(f"unknown persistent id {pid[:1]!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise RefusedPickle(f"refusing storage type {describe(storage_type)}")
        buffer = self.buffer(str(key), storage_type.dtype, numel)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return FlatStorage(buffer)
        _view_key, offset, view_numel = view  # old torch: a storage sharing another's memory
        (offset, view_numel) = _int_tuple((offset, view_numel), "storage view")
        if offset + view_numel > buffer.numel():
            raise CheckpointError("storage view reaches past its storage")
        return FlatStorage(buffer[offset:offset + view_numel])

    def buffer(self, key: str, dtype: torch.dtype, numel: Any) -> torch.Tensor:
        if key in self.buffers:
            return self.buffers[key]
        (numel,) = _int_tuple((numel,), "storage size")
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        self.budget -= nbytes
        if self.budget < 0:
            raise CheckpointError("storages claim more bytes than the file holds")
        if self.read_data is not None:
            buffer = bytes_to_tensor(self.read_data(key, nbytes), dtype)
        else:
            buffer = torch.zeros(numel, dtype=dtype)
        self.buffers[key] = buffer
        return buffer

    def fill_from_legacy_stream(self, f: BinaryIO, keys: Any) -> None:
        """After the legacy pickle: each storage as int64 element count + raw little-endian bytes."""
        if not isinstance(keys, list) or {str(k) for k in keys} != set(self.buffers):
            raise CheckpointError("storage list does not match the storages the pickle uses")
        for key in keys:
            buffer = self.buffers[str(key)]
            header = f.read(8)
            if len(header) != 8 or struct.unpack("<q", header)[0] != buffer.numel():
                raise CheckpointError(f"storage {key} is truncated or has the wrong size")
            data = f.read(buffer.numel() * buffer.element_size())
            buffer.copy_(bytes_to_tensor(data, buffer.dtype, expected=buffer.numel()))


def bytes_to_tensor(data: bytes, dtype: torch.dtype, expected: int | None = None) -> torch.Tensor:
    size = torch.empty((), dtype=dtype).element_size()
    if len(data) % size or (expected is not None and len(data) != expected * size):
        raise CheckpointError("storage data is truncated")
    if not data:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype)


def read_legacy_restricted(f: BinaryIO, size: int) -> Any:
    """torch's non-zip format: magic, protocol, sys_info, the main pickle, storage keys, data."""
    magic, protocol, sys_info = (RestrictedUnpickler(f).load() for _ in range(3))
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"unsupported legacy PyTorch header (protocol {protocol!r})")
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise CheckpointError("big-endian PyTorch files are not supported")
    storages = StorageTable(budget=size)
    obj = RestrictedUnpickler(f, storages.persistent_load).load()
    storages.fill_from_legacy_stream(f, RestrictedUnpickler(f).load())
    return obj


def check_zip_entries(zf: zipfile.ZipFile, file_size: int) -> None:
    """Refuses a zip whose central directory promises more bytes than the file holds: every entry
    must be stored uncompressed (torch.save never compresses; a deflated entry is how a 1 MB file
    expands to gigabytes inside ``torch.load``), its size as stored, and all of them together
    within the file's size. Reads the directory only, never an entry."""
    total = 0
    for info in zf.infolist():
        name = info.filename[-80:]
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"archive entry {name} is compressed (method {info.compress_type}); PyTorch "
                                  "checkpoints store entries uncompressed, so compressed ones are refused")
        if info.file_size != info.compress_size:
            raise CheckpointError(f"archive entry {name} claims {info.file_size} bytes but stores {info.compress_size}")
        total += info.file_size
        if total > file_size:
            raise CheckpointError(f"archive entries claim more bytes ({total}) than the file holds ({file_size})")


def read_zip_restricted(f: BinaryIO, size: int) -> Any:
    """torch's zip format: ``<archive>/data.pkl`` plus one ``<archive>/data/<key>`` per storage."""
    with zipfile.ZipFile(f) as zf:
        check_zip_entries(zf, size)
        pickles = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pickles:
            raise CheckpointError("zip archive without data.pkl: not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in zf.namelist() and zf.read(prefix + "byteorder").strip() != b"little":
            raise CheckpointError("big-endian PyTorch files are not supported")

        def read_data(key: str, nbytes: int) -> bytes:
            try:
                info = zf.getinfo(f"{prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"storage {key} is missing from the archive") from None
            if info.file_size < nbytes:  # stored uncompressed: check_zip_entries
                raise CheckpointError(f"storage {key} is shorter than its tensor")
            with zf.open(info) as entry:
                return entry.read(nbytes)

        storages = StorageTable(budget=size, read_data=read_data)
        return RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), storages.persistent_load).load()


# --- from the loaded object to a flat state dict -----------------------------------------------
def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Unwraps, reads module stand-ins, strips ``module.``, keeps only tensors (one copy each)."""
    obj = unwrap(obj)
    entries = module_tensors(obj) if isinstance(obj, PickledObject) else obj
    state = {}
    for key, value in entries.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            state[key.removeprefix("module.")] = value.detach().clone(memory_format=torch.contiguous_format)
    if not state:
        raise CheckpointError("contains no tensors")
    return state


def unwrap(obj: Any) -> Any:
    """Descends trainer wrappers (``WRAPPER_KEYS``, in that order of preference) to the weights."""
    for _ in range(8):  # bounded: a pickle may contain cycles
        if isinstance(obj, PickledObject):
            return obj
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"holds a {describe(obj)}, not a state dict")
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, PickledObject))), None)
        if inner is None:
            return obj
        obj = inner
    raise CheckpointError("wrappers nested too deep")


def module_tensors(module: PickledObject, prefix: str = "", depth: int = 0) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a pickled ``nn.Module``, with dotted names, in
    ``state_dict()`` order."""
    if depth > 100:
        raise CheckpointError("module nesting too deep")
    state = module.state[0] if isinstance(module.state, tuple) and module.state else module.state
    if not isinstance(state, Mapping) or "_parameters" not in state:
        if depth == 0:
            raise CheckpointError(f"holds a pickled {module.qualified_name} that is not a torch module")
        return {}
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset, list, tuple)) else ()
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, value in _items(state.get(group)):
            if isinstance(value, torch.Tensor) and name not in skip:
                out[prefix + name] = value
    for name, child in _items(state.get("_modules")):
        if isinstance(child, PickledObject):
            out.update(module_tensors(child, f"{prefix}{name}.", depth + 1))
    return out


def _items(mapping: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in mapping.items() if isinstance(k, str)] if isinstance(mapping, Mapping) else []
