"""The server's configuration: one pydantic-settings class, ``Settings``.

Sources, highest priority first: keyword arguments (the ``srserve serve`` flags), environment
variables ``SR_<FIELD>`` (e.g. ``SR_MAX_BATCH_TILES=8``), the config file named by
``config_file`` / ``SR_CONFIG_FILE`` (YAML, JSON or TOML, by suffix; keys are the field names),
then the defaults below. List fields take JSON (``["a","b"]``) or comma-separated text.
Unknown keys are refused so a typo in a config file is an error, not a silent default.
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from srserve.models.errors import SRError

Backend = Literal["auto", "torch", "compiled", "onnxruntime", "openvino", "tensorrt"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
PREFERRED_DEFAULT_MODEL = "edsr"  # the default model when the repository has it and none is configured
GPU_DEFAULT_BATCH = 8  # tiles per batch on a GPU when max_batch_tiles is not set


def masked(url: str) -> str:
    """A URL without its password (logs, /v1/models, error messages)."""
    return re.sub(r"//[^@/]*@", "//***@", url)


class ConfigError(SRError):
    """The configuration (file, environment or flags) is invalid: one line for the operator."""


StrList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SR_", extra="forbid", validate_default=True)

    config_file: Path | None = Field(None, description="YAML/JSON/TOML file with any of these settings")
    # --- models ---
    repository: Path = Field(Path("model_repository"), description="model repository folder")
    models: StrList = Field(default_factory=list,
                            description="models to load; empty = every model in the repository, plus bicubic")
    default_model: str | None = Field(None, description="model when the request names none "
                                      "(default: edsr if loaded, else the first loaded)")
    default_scale: int | None = Field(None, ge=1, description="scale when the request gives neither scale "
                                      "nor outscale (default: 4 when the model serves it, else its largest)")
    backend: Backend = Field("auto", description="auto = the fastest engine installed: on the CPU openvino, "
                             "onnxruntime, torch (missing graphs exported into engine_cache); on CUDA tensorrt, "
                             "compiled, onnxruntime, torch")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    precision: Precision = Field("auto", description="auto = bf16 with openvino on CPUs with native bf16 for "
                                 "scales that passed the CPU bf16 gate, else fp32; fp16/bf16 on CUDA only for "
                                 "fp16-safe models")
    threads: int | None = Field(None, ge=1, description="CPU inference threads (default: torch's)")
    engine_cache: Path | None = Field(None, description="on-the-fly ONNX exports, compiled OpenVINO models and "
                                      "TensorRT engines (default ~/.cache/srserve)")
    # --- batching ---
    max_batch_tiles: int | None = Field(None, ge=1, description=f"tiles per backend call (default: 1 on CPU, "
                                        f"{GPU_DEFAULT_BATCH} on GPU)")
    max_delay_ms: float = Field(5.0, ge=0, description="longest a tile waits for a batch to fill")
    tile_size: int | None = Field(None, ge=16, description="LR tile core side (default: per model, 128-512)")
    mdsr_cross_scale: bool = Field(True, description="torch backend: batch MDSR's shared body across scales")
    max_queued_tiles: int = Field(4096, ge=1, description="queued tiles (x8 with self-ensemble) above which new "
                                  "requests get 503")
    max_inflight_requests: int = Field(64, ge=1, description="concurrent /upscale requests above which new ones "
                                       "get 503")
    io_threads: int = Field(2, ge=1, description="threads decoding, composing and encoding images")
    # --- limits ---
    request_timeout_s: float = Field(120.0, gt=0, description="deadline per request once its body is read "
                                     "(504 after it)")
    body_timeout_s: float = Field(30.0, gt=0, description="longest time to receive a request body (408 after it); "
                                  "a request holds no inference slot while its body arrives")
    header_timeout_s: float = Field(10.0, gt=0, description="longest time to receive a request's headers "
                                    "(the connection is closed after it)")
    max_body_readers: int = Field(256, ge=1, description="requests receiving their body at once, above which new "
                                  "ones get 503")
    max_body_bytes: int = Field(32 << 20, ge=1, description="largest request body (413 above)")
    max_pixels: int = Field(2048 * 2048, ge=1, description="largest input in pixels, from the header (413 above)")
    max_output_pixels: int = Field(8192 * 8192, ge=1, description="largest output in pixels, checked before any "
                                   "work (413 above)")
    # --- jobs (POST /v1/jobs) and the result cache ---
    jobs_backend: str = Field("local", description="local = a spool directory with SQLite (one server); "
                              "redis://HOST:PORT/DB = shared by every server (state, leases, queue, inputs, results)")
    jobs_dir: Path | None = Field(None, description="spool of the local backend (default: SR_ENGINE_CACHE/jobs, "
                                  "else ~/.cache/srserve/jobs)")
    job_max_pixels: int = Field(8192 * 8192, ge=1, description="largest job input in pixels (413 above)")
    job_max_body_bytes: int = Field(256 << 20, ge=1, description="largest job request body (413 above)")
    job_ttl_s: float = Field(3600.0, gt=0, description="how long results (and errors) of finished jobs are kept; "
                             "410 after")
    jobs_max_bytes: int = Field(4 << 30, ge=0, description="inputs + results held; new jobs get 503 beyond it "
                                "(0 = no limit)")
    job_workers: int = Field(2, ge=1, description="jobs one server runs at once (their tiles share batches)")
    job_lease_s: float = Field(30.0, gt=0, description="a job whose server stops renewing its lease this long is "
                               "taken over by another server")
    cache_bytes: int = Field(256 << 20, ge=0, description="result cache (memory LRU) size; 0 turns it off")
    # --- access ---
    api_keys: StrList = Field(default_factory=list, description="accepted keys (Authorization: Bearer or "
                              "X-API-Key); empty = no authentication")
    cors_origins: StrList = Field(default_factory=list, description="origins allowed by CORS; empty = CORS off")
    # --- lifecycle ---
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, longest wait for accepted requests")
    warmup: bool = Field(True, description="run every model/scale once at startup before readyz turns true")
    host: str = Field("127.0.0.1", description="listen address (0.0.0.0 in containers)")
    port: int = Field(8000, ge=0, le=65535, description="listen port")
    log_level: LogLevel = Field("info", description="server log level")

    @field_validator("models", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """JSON list or comma-separated text (environment variables, flags)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("jobs_backend")
    @classmethod
    def _check_jobs_backend(cls, value: str) -> str:
        if value != "local" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must be local or a Redis URL (redis://HOST:PORT/DB), not {value!r}")
        return value

    @property
    def jobs_path(self) -> Path:
        """The local backend's spool directory."""
        from srserve.backends.artifacts import default_cache_dir

        return self.jobs_dir or (self.engine_cache or default_cache_dir()) / "jobs"

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        try:
            device = torch.device(value)
        except RuntimeError:
            raise ValueError(f"not a device: {value!r} (cpu, cuda, cuda:N)") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, not {value!r}")
        return value

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def batch_tiles(self) -> int:
        """Batching pays on a GPU, not on a CPU (one tile already uses every core)."""
        if self.max_batch_tiles is not None:
            return self.max_batch_tiles
        return GPU_DEFAULT_BATCH if self.torch_device.type == "cuda" else 1

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, ConfigFileSource(settings_cls, init_settings, env_settings)

    def public(self) -> dict:
        """The settings without secrets (for logs and /v1/models)."""
        data = self.model_dump(mode="json")
        data["api_keys"] = f"{len(self.api_keys)} key(s)" if self.api_keys else "off"
        data["jobs_backend"] = masked(self.jobs_backend)  # a Redis URL may hold a password
        return data


class ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the file named by ``config_file`` (flags win over ``SR_CONFIG_FILE``)."""

    def __init__(self, settings_cls, init_settings, env_settings):
        super().__init__(settings_cls)
        self.path = init_settings.init_kwargs.get("config_file") or env_settings().get("config_file")

    def get_field_value(self, field, field_name):  # required by the base class; __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_config_file(Path(self.path)) if self.path else {}


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"config file {path}: use .yaml, .yml, .json or .toml")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - yaml/json/toml each have their own error types
        raise ConfigError(f"config file {path} is not valid {suffix[1:]}: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(**overrides) -> Settings:
    """``Settings`` from flags (``overrides``; None = not given), environment and file, or a
    one-line ``ConfigError`` naming the bad setting."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where} (SR_{where.upper()}): {first['msg']}") from None
