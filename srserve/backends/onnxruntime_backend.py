"""ONNX Runtime backend: one session per (graph, scale, precision), created from trusted artifacts.

Providers, best first as installed: TensorRT EP (fp32 graph, fp16 as an EP flag, timing cache in
``<cache>/ort-tensorrt/<gpu>``, engines in a folder per graph sha256 below it, a profile from the
tile window) -> CUDA EP (the fp16 graph for fp16) -> CPU EP. On a GPU the tensors stay on the
device through IO binding; on the CPU the session gets the intra-op thread count (default:
torch's) and one inter-op thread (the graphs are chains; parallel branches are rare and tiny).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from srserve.models.repository import LoadedModel

from .artifacts import default_cache_dir
from .base import BackendError, GraphEngine, PrecisionGuard, resolve_precision
from .cuda import DEFAULT_MAX_BATCH, device_index, gpu_slug, tile_window
from .sources import ArtifactBuilder, OnnxArtifacts

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def has_gpu_provider() -> bool:
    return any(p in available_providers() for p in GPU_PROVIDERS)


def cpu_session_options(threads: int | None = None, spin: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spin:  # a server sharing its cores: do not busy-wait between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def shape_string(name: str, shape: tuple[int, ...]) -> str:
    return f"{name}:" + "x".join(str(d) for d in shape)


def tensorrt_ep_options(cache_dir: str | Path, device_id: int, gpu: str, sha256: str, fp16: bool,
                        profile: dict) -> dict:
    """TensorRT EP options. The EP names a cached engine after the model's file name and graph
    structure only (not its weights, nor the GPU model), and every model's graph is called
    ``x<scale>.fp32.onnx``: engines live in a folder per GPU model and graph sha256, so a
    retrained or another model never runs a stale engine. The EP names the timing cache per
    compute capability itself."""
    root = Path(cache_dir) / "ort-tensorrt" / gpu_slug(gpu)
    return {"device_id": int(device_id), "trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(root / sha256[:16]), "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(root), **profile}


class OnnxRuntimeBackend(GraphEngine):
    name = "onnxruntime"
    selected = "requested"

    def __init__(self, model: LoadedModel, device: str | torch.device = "cpu", precision: str = "fp32", *,
                 cache_dir: str | Path | None = None, builder: ArtifactBuilder | None = None, threads: int | None = None,
                 spin: bool = True, self_ensemble: bool = False, tile: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, force_precision: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.requested_precision = precision
        self.precision, self.precision_note = resolve_precision(precision, self.device, model.fp16_safe,
                                                                force=force_precision)
        if self.precision == "bf16":
            raise BackendError("the onnxruntime backend runs fp32 or fp16; use --backend tensorrt or torch for bf16")
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.artifacts = OnnxArtifacts(model, self.cache_dir, builder=builder)
        self.threads, self.spin = threads, spin
        self.tile, self.max_batch = tile, max_batch
        self.providers = self._providers()
        self._guard = PrecisionGuard(self.precision, f"{model.name}/onnxruntime")
        self._sessions: dict[tuple[str, int, str], tuple[object, list[str]]] = {}
        self.files: dict[str, str] = {}
        for scale in model.scales:  # load now: the first request must not pay for it
            self._session("sr", scale, self.precision)
            if model.needs_degradation:
                self._session("degradation", scale, "fp32")
            if self_ensemble:
                self._session("ensemble", scale, self.precision)
        self.self_ensemble = self_ensemble

    # --- sessions ---------------------------------------------------------------------------
    def _providers(self) -> list[str]:
        available = available_providers()
        if self.device.type == "cpu":
            return ["CPUExecutionProvider"]
        if self.device.type != "cuda":
            raise BackendError(f"the onnxruntime backend runs on cpu or cuda, not {self.device}")
        gpu = [p for p in GPU_PROVIDERS if p in available]
        if not gpu:
            raise BackendError("this onnxruntime has no CUDA or TensorRT execution provider (the GPU image installs "
                               "onnxruntime-gpu); use --device cpu or --backend torch")
        return gpu + ["CPUExecutionProvider"]

    def _graph_precision(self, kind: str, precision: str) -> str:
        """The TensorRT EP builds reduced precision itself from the fp32 graph (a build flag)."""
        if kind == "degradation" or self.providers[0] == "TensorrtExecutionProvider":
            return "fp32"
        return precision

    def _provider_options(self, scale: int, kind: str, precision: str, sha256: str) -> list:
        """Per-session providers for the graph with ``sha256``. DASR's encoder skips the TensorRT
        EP: it sees whole images of any size, which no tile profile bounds (the EP would rebuild
        its engine for new sizes)."""
        index = device_index(self.device) if self.device.type == "cuda" else 0
        options = []
        for provider in self.providers:
            if provider == "TensorrtExecutionProvider":
                if kind == "degradation":
                    continue
                trt = tensorrt_ep_options(self.cache_dir, index, torch.cuda.get_device_name(index), sha256,
                                          precision == "fp16", self._trt_profile(scale))
                os.makedirs(trt["trt_engine_cache_path"], exist_ok=True)  # the EP creates one level only
                options.append((provider, trt))
            elif provider == "CUDAExecutionProvider":
                options.append((provider, {"device_id": index, "cudnn_conv_algo_search": "HEURISTIC"}))
            else:
                options.append((provider, {}))
        return options

    def _trt_profile(self, scale: int) -> dict:
        window = tile_window(self.model, scale, self.tile)
        inputs = {"image": lambda b, s: (b, 3, s, s), "degradation": lambda b, s: (b, 256)}
        names = ["image"] + (["degradation"] if self.model.needs_degradation else [])

        def shapes(batch, side):
            return ",".join(shape_string(n, inputs[n](batch, side)) for n in names)

        return {"trt_profile_min_shapes": shapes(1, min(8, window)),
                "trt_profile_opt_shapes": shapes(self.max_batch, window),
                "trt_profile_max_shapes": shapes(self.max_batch, window)}

    def _session(self, kind: str, scale: int, precision: str):
        key = (kind, int(scale), precision)
        if key not in self._sessions:
            import onnxruntime as ort

            self.model.net(scale)  # a clear error for a scale the model does not serve
            path, artifact = self.artifacts.get(kind, scale, self._graph_precision(kind, precision))
            options = cpu_session_options(self.threads, self.spin)
            providers = self._provider_options(scale, kind, precision, artifact.sha256)
            session = ort.InferenceSession(str(path), options, providers=providers)
            self._sessions[key] = (session, [i.name for i in session.get_inputs()])
            self.files[f"{kind} x{scale} {precision}"] = str(path)
        return self._sessions[key]

    # --- running ----------------------------------------------------------------------------
    @property
    def fp16_fallbacks(self) -> int:
        return self._guard.fallbacks

    def _feeds(self, names: list[str], *tensors: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {n: t.float().contiguous() for n, t in super()._feeds(names, *tensors).items()}

    def _execute(self, kind: str, scale: int, precision: str, feeds: dict[str, torch.Tensor],
                 out_shape: tuple[int, ...]) -> torch.Tensor:
        session, _ = self._session(kind, scale, precision)
        if self.device.type == "cpu":
            return torch.from_numpy(session.run(None, {n: t.cpu().numpy() for n, t in feeds.items()})[0])
        return self._execute_bound(session, feeds, out_shape)

    def _execute_bound(self, session, feeds: dict[str, torch.Tensor], out_shape: tuple[int, ...]) -> torch.Tensor:
        """IO binding: inputs and the output stay in CUDA memory owned by torch."""
        index = device_index(self.device)
        binding = session.io_binding()
        held = []
        for name, t in feeds.items():
            t = t.to(self.device).contiguous()
            held.append(t)
            binding.bind_input(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        binding.bind_output(session.get_outputs()[0].name, "cuda", index, np.float32, out_shape, out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        session.run_with_iobinding(binding)
        return out

    def _run_graph(self, kind: str, x: torch.Tensor, scale: int, degradation: torch.Tensor | None) -> torch.Tensor:
        scale = int(scale)
        _, names = self._session(kind, scale, self.precision)
        feeds = self._feeds(names, x, degradation)
        n, _, h, w = x.shape
        shape = (n, 3, h * scale, w * scale)
        out = self._execute(kind, scale, self.precision, feeds, shape)
        return self._guard.check(out, lambda: self._execute(kind, scale, "fp32", feeds, shape))

    def degradation(self, x: torch.Tensor, scale: int) -> torch.Tensor | None:
        if not self.model.needs_degradation:
            return None
        _, names = self._session("degradation", scale, "fp32")
        return self._execute("degradation", int(scale), "fp32", self._feeds(names, x), (x.shape[0], 256))

    def describe(self) -> dict:
        return {"backend": self.name, "selected": self.selected, "device": str(self.device),
                "precision": self.precision,
                "requested_precision": self.requested_precision, "precision_note": self.precision_note,
                "fp16_fallbacks": self.fp16_fallbacks, "providers": self.providers, "graphs": dict(self.files),
                "graph_self_ensemble": self.self_ensemble,
                "threads": None if self.device.type != "cpu" else int(self.threads or torch.get_num_threads())}
