"""Tiny random networks of every architecture in a real repository, exported once per test run.

ONNX export and the parity runs are the slow part of the export tests on a 2-core machine, so
``exported_repository()`` exports the fp32 SR graphs (and DASR's encoder) of every tiny model
once per process and the test modules share it read-only; tests that change a repository make
their own with ``tiny_repository``.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import tiny_models
from srserve.models.repository import Repository
from tiny_models import make_net  # noqa: F401 - the test modules take it from here

# name -> [(architecture, hyper-parameters), ...] (one entry per weights file)
TINY = {
    "edsr": [("edsr", {"n_resblocks": 1, "n_feats": 8, "scale": 2})],
    "mdsr": [("mdsr", {"n_resblocks": 1, "n_feats": 8, "scales": [2, 3, 4]})],
    "vdsr": [("vdsr", {"num_layers": 4, "n_feats": 8, "scales": [2, 3]})],
    "dasr": [("dasr", {"n_groups": 1, "n_blocks": 1, "n_feats": 8, "reduction": 4, "scale": 2})],
    "rrdb": [("rrdbnet", {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 2}),
             ("rrdbnet", {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 4})],
}
HEADS = [(name, scale) for name, files in TINY.items() for _, h in files for scale in h.get("scales", [h.get("scale")])]


def tiny_repository(root: Path, names=None, seed: int = 0) -> Repository:
    return tiny_models.tiny_repository(root, TINY, names, seed)


@functools.lru_cache(maxsize=None)
def exported_repository() -> Repository:
    """Every tiny model with its fp32 SR graphs (every scale, every MDSR head) and DASR's encoder."""
    from srserve.export.onnx_export import export_model, plan_jobs

    root = Path(tempfile.mkdtemp(prefix="srserve-export-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    repo = tiny_repository(root)
    for name in TINY:
        model = repo.load(name)
        written, failures = export_model(model, repo.root / name, plan_jobs(model, model.scales, ["fp32"]),
                                         progress=False, log=lambda line: None)
        assert not failures, failures
    return repo
