# srserve images: `--target cpu` (default base: slim Python) and `--target gpu` (CUDA + cuDNN
# runtime with onnxruntime-gpu and TensorRT). Both run `srserve serve` as a non-root user (uid
# 10001) with the default model repository baked in at $SR_REPOSITORY (mount another one over it,
# or point SR_REPOSITORY at a mount) and the TensorRT engine cache on a volume at $SR_ENGINE_CACHE
# (engines are built on first start, or ahead of time with `srserve export`, then reused).
#
#   docker build --target cpu -t srserve:cpu .
#   docker build --target gpu -t srserve:gpu .
#
# Offline build (what docker/test-image.sh does): download the wheels on the host first,
#   pip download -d wheels --only-binary=:all: -r docker/requirements-cpu.txt -r docker/requirements-build.txt
# then build with --network none --build-arg PIP_NO_INDEX=1. The base is swappable with
# --build-arg BASE=... (any Debian-like image with python3 >= 3.11 and python3-venv).
#
# Layout notes. Only classic-builder features are used (DOCKER_BUILDKIT=0 builds it). The classic
# builder builds every stage before the target, so the CPU stages come first; the last stage makes
# a plain `docker build .` give the CPU image. Each stage puts its big layer last and everything
# else before it: with storage drivers that copy whole layers (vfs) every later instruction would
# copy the 1.5 GB virtualenv again.

ARG BASE=python:3.11.14-slim-bookworm
ARG GPU_BASE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- srserve wheel (pure Python)
FROM ${BASE} AS wheel
# pip reads these as its own settings: PIP_NO_INDEX=1 + the copied wheels for offline builds.
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=/build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml setup.py README.md /src/
COPY models /src/models
COPY srserve /src/srserve
COPY export /src/export
COPY service /src/service
COPY train /src/train
COPY docker/requirements-build.txt wheels* /build/
# The build tools are pinned in requirements-build.txt instead of coming from build isolation.
RUN python3 -m venv /tmp/build-venv \
 && /tmp/build-venv/bin/pip install --only-binary=:all: -r /build/requirements-build.txt \
 && /tmp/build-venv/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist /src

# ---------------------------------------------------------------- CPU: the virtualenv
FROM ${BASE} AS cpu-builder
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=/build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The lock files, plus the contents of ./wheels when it exists (offline builds).
COPY docker/requirements-common.txt docker/requirements-cpu.txt wheels* /build/
COPY --from=wheel /dist /dist
# One layer: the pinned dependencies, srserve itself with --no-deps (pip check proves nothing is
# missing), a smoke test of the server's command line, then what serving never uses: torch's C++ headers and
# C++ test binaries (there is no compiler in the image to use them).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: --extra-index-url "${TORCH_INDEX_URL}" \
        -r /build/requirements-cpu.txt \
 && /opt/venv/bin/pip install --no-deps /dist/*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/srserve serve --help >/dev/null \
 && site=$(/opt/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$site/torch/include" "$site/torch/test" "$site"/torch/bin/test_* "$site"/torch/bin/*Test

# ---------------------------------------------------------------- CPU: runtime image
FROM ${BASE} AS cpu
COPY model_repository /opt/srserve/model_repository
# a+rX: safetensors writes weights with mode 0600, and the server runs as uid 10001.
RUN useradd --system --uid 10001 --user-group --home-dir /opt/srserve --shell /usr/sbin/nologin srserve \
 && mkdir -p /var/cache/srserve \
 && chown srserve:srserve /var/cache/srserve \
 && chmod -R a+rX /opt/srserve/model_repository
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SR_HOST=0.0.0.0 \
    SR_PORT=8000 \
    SR_REPOSITORY=/opt/srserve/model_repository \
    SR_ENGINE_CACHE=/var/cache/srserve \
    SR_DEVICE=cpu
VOLUME ["/var/cache/srserve"]
WORKDIR /opt/srserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SR_PORT', '8000'), timeout=4)"]
# srserve is PID 1 and gets SIGTERM itself: it drains accepted requests (SR_DRAIN_TIMEOUT_S), then
# exits 0. Host and port come from SR_HOST / SR_PORT, which the healthcheck reads too.
CMD ["srserve", "serve"]
USER 10001:10001
COPY --from=cpu-builder /opt/venv /opt/venv

# ---------------------------------------------------------------- GPU: Python on the CUDA base
FROM ${GPU_BASE} AS gpu-python
# Versions come from the pinned base image tag; Ubuntu drops superseded package versions from its
# archive, so pinning them here would break the build rather than make it reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- GPU: the virtualenv
FROM gpu-python AS gpu-builder
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=/build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY docker/requirements-common.txt docker/requirements-gpu.txt wheels* /build/
COPY --from=wheel /dist /dist
# tensorrt-cu13 is a source-only meta package (the `tensorrt` module over the pinned
# tensorrt-cu13-bindings and -libs wheels): the one package allowed to build from source.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: --no-binary=tensorrt-cu13 -r /build/requirements-gpu.txt \
 && /opt/venv/bin/pip install --no-deps /dist/*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/srserve serve --help >/dev/null \
 && site=$(/opt/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$site/torch/include" "$site/torch/test" "$site"/torch/bin/test_* "$site"/torch/bin/*Test

# ---------------------------------------------------------------- GPU: runtime image
FROM gpu-python AS gpu
COPY model_repository /opt/srserve/model_repository
# a+rX: safetensors writes weights with mode 0600, and the server runs as uid 10001.
RUN useradd --system --uid 10001 --user-group --home-dir /opt/srserve --shell /usr/sbin/nologin srserve \
 && mkdir -p /var/cache/srserve \
 && chown srserve:srserve /var/cache/srserve \
 && chmod -R a+rX /opt/srserve/model_repository
# tensorrt_libs: the TensorRT shared libraries of the tensorrt-cu13 wheel, for onnxruntime's
# TensorRT execution provider (the tensorrt Python module finds them on its own).
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs:$LD_LIBRARY_PATH \
    PYTHONUNBUFFERED=1 \
    SR_HOST=0.0.0.0 \
    SR_PORT=8000 \
    SR_REPOSITORY=/opt/srserve/model_repository \
    SR_ENGINE_CACHE=/var/cache/srserve \
    SR_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME ["/var/cache/srserve"]
WORKDIR /opt/srserve
EXPOSE 8000
# Long start period: the first start builds TensorRT engines into the (empty) cache volume.
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SR_PORT', '8000'), timeout=4)"]
CMD ["srserve", "serve"]
USER 10001:10001
COPY --from=gpu-builder /opt/venv /opt/venv

# ---------------------------------------------------------------- default target
FROM cpu AS default
