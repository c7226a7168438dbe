"""SRVGGNetCompact, SPAN, SwinIR and HAT: official-layout checkpoints (``community_checkpoints``)
are detected with the right hyper-parameters and load strictly; the networks match naive
references written from the official definitions; they tile, export to ONNX with parity and serve
like our own families; and no family is ever detected as another.

Real release sizes are used for detection and for the cheap convolutional forwards; the
transformer forwards use small embedding dims and depths (2 cores, no GPU).
"""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from community_checkpoints import (fill, hat_layout, span_layout, span_ref, srvgg_layout, srvgg_ref, swinir_layout,
                                   transformer_ref)
from export_nets import TINY as OUR_TINY
from export_nets import make_net as make_our_net
from service_fixtures import decode, image_bytes, pipeline_result, running_app, service_settings
from srserve.backends import TorchBackend
from srserve.cli import main
from srserve.models.checkpoint import extract_state_dict, load_checkpoint
from srserve.models.registry import ARCHITECTURES, detect, load_network
from srserve.models.repository import Repository
from srserve.pipeline import upscale_tensor
from srserve.pipeline.tiling import default_tiling

NEW = ("srvgg", "span", "swinir", "hat")
OURS = ("vdsr", "edsr", "mdsr", "rrdbnet", "dasr")

# --- the release checkpoints, at their published sizes -------------------------------------------
SWINIR_M = {"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8, "mlp_ratio": 2.0}
RELEASES = {
    # name: (wrapper key, layout, expected detection)
    "realesr-general-x4v3.pth": ("params", srvgg_layout(64, 32, 4), (
        "srvgg", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 32, "scale": 4, "act_type": "prelu"})),
    "realesr-animevideov3.pth": ("params", srvgg_layout(64, 16, 4), (
        "srvgg", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 16, "scale": 4, "act_type": "prelu"})),
    "001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth": ("params", swinir_layout(180, [6] * 6, [6] * 6, 8, 2.0, "pixelshuffle", 2), (
        "swinir", {**SWINIR_M, "upsampler": "pixelshuffle", "scale": 2, "num_feat": 64, "resi_connection": "1conv"})),
    "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x3.pth": ("params", swinir_layout(60, [6] * 4, [6] * 4, 8, 2.0, "pixelshuffledirect", 3), (
        "swinir", {"embed_dim": 60, "depths": [6] * 4, "num_heads": [6] * 4, "window_size": 8, "mlp_ratio": 2.0,
                   "upsampler": "pixelshuffledirect", "scale": 3, "resi_connection": "1conv"})),
    "003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN.pth": ("params_ema", swinir_layout(180, [6] * 6, [6] * 6, 8, 2.0, "nearest+conv", 4), (
        "swinir", {**SWINIR_M, "upsampler": "nearest+conv", "scale": 4, "num_feat": 64, "resi_connection": "1conv"})),
    "HAT-S_SRx4.pth": ("params_ema", hat_layout(144, [6] * 6, [6] * 6, 16, 24, 24, 2.0, 4), (
        "hat", {"embed_dim": 144, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16, "compress_ratio": 24,
                "squeeze_factor": 24, "overlap_ratio": 0.5, "mlp_ratio": 2.0, "scale": 4, "num_feat": 64,
                "conv_scale": 0.01, "resi_connection": "1conv"})),
    "spanx4_ch48.pth": ("params_ema", span_layout(48, 4), (
        "span", {"num_in_ch": 3, "num_out_ch": 3, "feature_channels": 48, "scale": 4, "norm": True, "img_range": 255.0})),
}

# --- small versions for the forwards, tiling, export and the server -------------------------------
# name: (architecture, layout, hyper-parameters the reference needs, scale)
TINY_SWIN = {"embed_dim": 8, "depths": [2, 2], "num_heads": [2, 2], "window_size": 4, "mlp_ratio": 2.0}
TINY = {
    "compact": ("srvgg", srvgg_layout(8, 3, 4), {"scale": 4}),
    "span": ("span", span_layout(8, 4), {"scale": 4}),
    "swinir-classical": ("swinir", swinir_layout(8, [2, 2], [2, 2], 4, 2.0, "pixelshuffle", 2, num_feat=8, img_size=16),
                         {**TINY_SWIN, "upsampler": "pixelshuffle", "scale": 2}),
    "swinir-light": ("swinir", swinir_layout(8, [2, 2], [2, 2], 4, 2.0, "pixelshuffledirect", 3, img_size=16),
                     {**TINY_SWIN, "upsampler": "pixelshuffledirect", "scale": 3}),
    "swinir-real": ("swinir", swinir_layout(8, [2, 2], [2, 2], 4, 2.0, "nearest+conv", 4, resi="3conv", num_feat=8,
                                            img_size=16),
                    {**TINY_SWIN, "upsampler": "nearest+conv", "scale": 4, "resi_connection": "3conv"}),
    "hat": ("hat", hat_layout(8, [2], [2], 4, 2, 2, 2.0, 4, num_feat=8), {**TINY_SWIN, "depths": [2], "num_heads": [2],
                                                                          "scale": 4}),
}


def tiny_state(name: str, seed: int = 0) -> dict:
    state = fill(TINY[name][1], seed)
    if TINY[name][0] == "span":
        # a trained SPAN's first layer absorbs its ×255 input scaling; random weights that do not
        # give outputs in the hundreds, where float32 rounding alone is several 8-bit levels
        state["conv_1.sk.weight"] /= 255
        state["conv_1.conv.0.weight"] /= 255
    return state


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repository:
    """Every tiny model imported into a real repository (its weights as our loader stored them)."""
    repository = Repository(tmp_path_factory.mktemp("community-repo"))
    for i, name in enumerate(TINY):
        arch, hparams, net = load_network(tiny_state(name, seed=i))
        assert arch == TINY[name][0]
        repository.add_weights(name, arch, hparams, net.state_dict())
    return repository


def synthetic(height: int, width: int, seed: int) -> torch.Tensor:
    from srserve.export.onnx_export import synthetic_image

    return synthetic_image(height, width, seed=seed)


# --- detection and strict loading ---------------------------------------------------------------
@pytest.mark.parametrize("file", list(RELEASES))
def test_release_layout_is_detected_and_loads_strictly(file):
    wrapper, layout, (arch, expected) = RELEASES[file]
    official = fill(layout, seed=1)
    decoy = {k: torch.zeros_like(v) for k, v in official.items()}  # BasicSR keeps both; EMA wins
    state = extract_state_dict({wrapper: official, **({"params": decoy} if wrapper == "params_ema" else {})})
    got_arch, hparams, net = load_network(state)
    assert got_arch == arch
    assert {k: hparams[k] for k in expected} == expected
    loaded = net.state_dict()
    learned = [k for k in official if k in loaded]
    assert all(torch.equal(loaded[k], official[k]) for k in learned if "eval_conv" not in k)
    # only the derived buffers (position indices, masks, SPAN's folded eval kernels) are not taken verbatim
    dropped = set(official) - set(learned)
    assert all(k.endswith(("relative_position_index", "attn_mask", "_SA", "_OCA")) for k in dropped), sorted(dropped)[:3]


def test_release_file_in_params_ema_through_the_loader(tmp_path):
    """The real-world SwinIR as a file: the torch.load path, wrapper and all."""
    file = "003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN.pth"
    wrapper, layout, (arch, expected) = RELEASES[file]
    torch.save({wrapper: fill(layout, seed=2), "params": {"conv_first.weight": torch.zeros(1)}}, tmp_path / file)
    got_arch, hparams, _ = load_network(load_checkpoint(tmp_path / file))
    assert (got_arch, hparams["upsampler"], hparams["scale"]) == (arch, "nearest+conv", 4)


def test_no_family_is_detected_as_another():
    """Our five families (tiny and default sizes) and every new layout: exactly one detector fires."""
    states = {f"{name}-tiny": (arch, make_our_net(arch, h, seed=0).state_dict())
              for name, files in OUR_TINY.items() for arch, h in files}
    states |= {f"{arch}-default": (arch, make_our_net(arch, {}, seed=0).state_dict()) for arch in OURS}
    states |= {file: (expected[0], fill(layout, seed=3)) for file, (_, layout, expected) in RELEASES.items()}
    states |= {name: (arch, tiny_state(name)) for name, (arch, _, _) in TINY.items()}
    states["compact-relu"] = ("srvgg", fill(srvgg_layout(8, 3, 2, prelu=False), seed=4))
    for label, (arch, state) in states.items():
        firing = [name for name, spec in ARCHITECTURES.items() if spec.detect(state) is not None]
        assert firing == [arch], label
        assert detect(state)[0] == arch, label
    assert set(NEW) | set(OURS) == set(ARCHITECTURES)


def test_stored_layout_round_trips(repo):
    """What the repository stores (our layout, derived buffers gone) is detected as itself."""
    for name in TINY:
        entry = repo.get(name)
        stored = load_file(str(entry.path / entry.weights[0].file))
        arch, hparams, _ = load_network(stored)
        assert arch == entry.architecture and hparams == entry.weights[0].hparams


# --- forwards against the references ------------------------------------------------------------
@pytest.mark.parametrize("file", ["realesr-general-x4v3.pth", "realesr-animevideov3.pth"])
def test_compact_release_matches_the_official_loop(file):
    _, layout, _ = RELEASES[file]
    state = fill(layout, seed=5)
    _, _, net = load_network(state)
    x = synthetic(12, 10, seed=1)
    with torch.no_grad():
        got, want = net(x), srvgg_ref(state, x, 4)
    assert got.shape == (1, 3, 48, 40)
    assert float((got - want).abs().max()) < 1e-4 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("act", ["relu", "leakyrelu"])
def test_compact_without_prelu_defaults_to_relu_and_hparams_override(tmp_path, capsys, act):
    state = fill(srvgg_layout(8, 3, 2, prelu=False), seed=6)
    torch.save({"params": state}, tmp_path / "compact.pth")
    extra = [] if act == "relu" else ["--hparams", f"act_type={act}"]
    assert main(["import", str(tmp_path / "compact.pth"), "--name", "c", "--repository", str(tmp_path / "r"),
                 *extra]) == 0
    out = capsys.readouterr().out
    assert f"act_type={act}" in out and ("(given: act_type)" in out) == bool(extra)
    net = Repository(tmp_path / "r").load("c").net(2)
    x = synthetic(9, 7, seed=2)
    with torch.no_grad():
        assert torch.allclose(net(x), srvgg_ref(state, x, 2, act), atol=1e-5)


def test_unknown_hparams_are_a_one_line_error(tmp_path, capsys):
    torch.save({"params": fill(srvgg_layout(8, 3, 2), seed=7)}, tmp_path / "compact.pth")
    args = ["import", str(tmp_path / "compact.pth"), "--name", "c", "--repository", str(tmp_path / "r")]
    assert main([*args, "--hparams", "act=relu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "srvgg has no hyper-parameter 'act'" in err and "act_type" in err
    assert main([*args, "--hparams", "act_type=gelu"]) == 1
    assert "act_type must be one of prelu, relu, leakyrelu" in capsys.readouterr().err
    assert not (tmp_path / "r" / "c").exists()


def test_span_release_matches_the_training_mode_branches():
    """The folded eval_conv equals the official branches (sk + 1×1 → 3×3 → 1×1 on the zero-padded
    input), even though the file's own eval_conv kernels are garbage (saved during training)."""
    _, layout, _ = RELEASES["spanx4_ch48.pth"]
    state = fill(layout, seed=8)
    _, _, net = load_network(state)
    x = synthetic(11, 9, seed=3)
    with torch.no_grad():
        got, want = net(x), span_ref(state, x, 4)
    assert got.shape == (1, 3, 44, 36)
    assert float((got - want).abs().max()) < 1e-4 * max(1.0, float(want.abs().max()))


def test_span_without_normalisation():
    state = fill(span_layout(8, 2), seed=9) | {"no_norm": torch.zeros(1)}
    arch, hparams, net = load_network(state)
    assert (arch, hparams["norm"], hparams["scale"]) == ("span", False, 2)
    x = torch.rand(1, 3, 6, 7)
    with torch.no_grad():
        normed = span_ref(state, x / 255.0 + torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1), 2)
        assert torch.allclose(net(x), normed, atol=1e-4)  # no (x - mean)·255 in front


@pytest.mark.parametrize("name", ["swinir-classical", "swinir-light", "swinir-real", "hat"])
def test_transformer_matches_the_naive_reference(name):
    """9×11 is padded to 12×12 (three windows of 4 each way, shifted ones masked), cropped back."""
    arch, layout, h = TINY[name]
    state = fill(layout, seed=10)
    _, _, net = load_network(state)
    x = synthetic(9, 11, seed=4)
    with torch.no_grad():
        got, want = net(x), transformer_ref(state, x, h, hat=arch == "hat")
    s = h["scale"]
    assert got.shape == want.shape == (1, 3, 9 * s, 11 * s)
    assert float((got - want).abs().max()) < 1e-4, float((got - want).abs().max())
    assert float(got.std()) > 0.05  # not a constant image


def test_swinir_padding_is_reflection_and_the_crop_matches_the_padded_run():
    """Running the explicitly reflect-padded 12×12 image gives the same pixels in the 9×11 corner."""
    _, layout, h = TINY["swinir-classical"]
    _, _, net = load_network(fill(layout, seed=11))
    x = synthetic(9, 11, seed=5)
    padded = torch.cat([x, x.flip(-2)[:, :, 1:4]], dim=-2)
    padded = torch.cat([padded, padded.flip(-1)[:, :, :, 1:2]], dim=-1)
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded)[..., :18, :22], atol=1e-6)


# --- pipeline: tiling ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TINY))
def test_tiled_equals_untiled(repo, name):
    """Default tiling: crop-stitch exact where the radius is a usable margin (every tiny model
    here but HAT, whose channel attention sees the whole image), else the blended effective
    margin; ``exact`` always equals the untiled run."""
    backend = TorchBackend(repo.load(name))
    scale = TINY[name][2]["scale"]
    x = synthetic(46, 39, seed=6)
    whole = upscale_tensor(backend, x, scale, tile=0)
    tiled = upscale_tensor(backend, x, scale, tile=16)
    exact = upscale_tensor(backend, x, scale, tile=16, exact=True)
    cfg = default_tiling(backend, scale)
    assert cfg.align == (TINY[name][2].get("window_size", 1) if TINY[name][0] in ("swinir", "hat") else 1)
    assert float((exact - whole).abs().max()) < 1e-5
    levels = float(((tiled - whole) * 255).round().abs().max())
    if cfg.feather:
        assert name == "hat" and levels <= 1, levels  # blended: within one 8-bit level
    else:
        assert float((tiled - whole).abs().max()) < 1e-5


def test_swinir_blended_effective_margin_stays_within_one_level(repo):
    """The blend path SwinIR's full-size models take by default (radius > 128 px), forced here."""
    backend = TorchBackend(repo.load("swinir-classical"))
    x = synthetic(48, 40, seed=7)
    whole = upscale_tensor(backend, x, 2, tile=0)
    margin = int(ARCHITECTURES["swinir"].effective_radius(repo.load("swinir-classical").hparams(2), 2))
    assert margin == 4 * (2 + 1)  # ws × (2 + ⌈groups/3⌉)
    blended = upscale_tensor(backend, x, 2, tile=16, margin=margin, feather=margin // 2)
    assert float(((blended - whole) * 255).round().abs().max()) <= 1


def test_full_size_tiling_facts():
    """What default_tiling will use for the releases: SwinIR's radius exceeds 128 px (blend at
    4 windows = 32 px), HAT's is the whole image (blend at 64 px), SPAN/compact crop-stitch."""
    from srserve.models.repository import LoadedModel, ModelEntry, WeightsFile

    def tiling(file):
        arch, hparams = detect(fill(RELEASES[file][1], seed=0))
        entry = ModelEntry(name="m", path=None, architecture=arch, weights=[WeightsFile("x", [hparams["scale"]], hparams)])
        return default_tiling(LoadedModel("m", arch, {}, entry), hparams["scale"])

    classical, hat_s = tiling("001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth"), tiling("HAT-S_SRx4.pth")
    assert classical.receptive_radius > 128 and (classical.margin, classical.feather, classical.align) == (32, 16, 8)
    assert hat_s.receptive_radius >= 2048 and (hat_s.margin, hat_s.feather, hat_s.align) == (64, 32, 16)
    compact, span = tiling("realesr-general-x4v3.pth"), tiling("spanx4_ch48.pth")
    assert (compact.margin, compact.feather, span.margin, span.feather) == (34, 0, 21, 0)


# --- ONNX export --------------------------------------------------------------------------------
def test_onnx_export_parity_for_every_family(repo):
    """Every tiny model exports (dynamic batch/height/width) with the exporter's parity check, and
    the graph matches PyTorch on a shape used neither for tracing nor for the recorded parity."""
    import onnxruntime as ort

    from srserve.backends.artifacts import ExportIndex
    from srserve.export.onnx_export import export_model, plan_jobs

    for name in TINY:
        model = repo.load(name)
        scale = model.scales[0]
        written, failures = export_model(model, repo.root / name, plan_jobs(model, [scale], ["fp32"]),
                                         progress=False, log=lambda line: None)
        assert not failures, failures
        artifact = ExportIndex(repo.root / name, name).find("sr", scale, "fp32")
        assert artifact.parity["passed"] and artifact.parity["real"]["max_levels"] <= 1
        session = ort.InferenceSession(str(repo.root / name / artifact.file), providers=["CPUExecutionProvider"])
        x = torch.rand(2, 3, 13, 18, generator=torch.Generator().manual_seed(1))
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        with torch.inference_mode():
            want = model.net(scale)(x)
        assert got.shape == (2, 3, 13 * scale, 18 * scale)
        assert float((got - want).abs().max()) < 1e-4, name


# --- server -------------------------------------------------------------------------------------
def test_one_request_per_family_through_the_server(repo):
    names = ["compact", "span", "swinir-light", "hat"]
    body = image_bytes(30, 27, seed=4)

    async def scenario():
        async with running_app(service_settings(repo.root, models=names)) as (_, client):
            models = (await client.get("/v1/models")).json()["models"]
            replies = [await client.post(f"/upscale?model={n}&scale={TINY[n][2]['scale']}", content=body,
                                         headers={"Content-Type": "image/png"}) for n in names]
            return models, replies

    models, replies = asyncio.run(scenario())
    assert {m["name"]: m["architecture"] for m in models if m["name"] in names} == {
        "compact": "srvgg", "span": "span", "swinir-light": "swinir", "hat": "hat"}
    for name, r in zip(names, replies):
        scale = TINY[name][2]["scale"]
        assert r.status_code == 200, r.text
        served = decode(r.content)
        expected = pipeline_result(repo.root, name, scale, body)
        assert served.shape == expected.shape == (30 * scale, 27 * scale, 3)
        assert np.abs(served - expected).max() <= 1, name


# --- the CLI ------------------------------------------------------------------------------------
def test_import_names_family_and_hparams_and_list_shows_licence(tmp_path, capsys):
    file = tmp_path / "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x3.pth"
    torch.save({"params": fill(RELEASES[file.name][1], seed=12)}, file)
    repo = tmp_path / "repo"
    assert main(["import", str(file), "--name", "swinir-s", "--repository", str(repo),
                 "--license", "Apache-2.0", "--provenance", "JingyunLiang/SwinIR"]) == 0
    out = capsys.readouterr().out
    assert "detected: swinir num_in_ch=3 embed_dim=60 depths=[6, 6, 6, 6] num_heads=[6, 6, 6, 6] window_size=8" in out
    assert "upsampler=pixelshuffledirect scale=3" in out and "scales: x3;" in out
    meta = json.loads((repo / "swinir-s" / "model.json").read_text())
    assert (meta["architecture"], meta["license"], meta["weights"][0]["source"]["file"]) == (
        "swinir", "Apache-2.0", file.name)

    assert main(["list", "--repository", str(repo)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:7] == ["name", "architecture", "scales", "params", "size", "licence", "description"]
    row = next(line for line in table if line.startswith("swinir-s"))
    assert row.split()[1:3] == ["swinir", "x3"] and "Apache-2.0" in row


def test_list_architectures_names_every_family_its_files_and_licence(capsys):
    assert main(["list", "--architectures"]) == 0
    text = capsys.readouterr().out
    for spec in ARCHITECTURES.values():
        assert f"{spec.name}  " in text and spec.checkpoints in text and spec.license in text
    assert "realesr-general-x4v3.pth" in text and "HAT-S_SRx{2,3,4}.pth" in text and "spanx{2,4}_ch{48,52}.pth" in text
    assert main(["list", "--architectures", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(ARCHITECTURES)
    assert all(r["license"] and r["checkpoints"] for r in rows)


def test_swinir_denoiser_is_refused_in_one_line(tmp_path, capsys):
    layout = swinir_layout(8, [2], [2], 4, 2.0, "pixelshuffle", 2, num_feat=8, img_size=16)
    state = {k: v for k, v in fill(layout, seed=13).items() if not k.startswith(("conv_before", "upsample."))}
    state["conv_last.weight"], state["conv_last.bias"] = torch.zeros(3, 8, 3, 3), torch.zeros(3)
    torch.save({"params": state}, tmp_path / "005_colorDN_DFWB_s128w8_SwinIR-M_noise15.pth")
    assert main(["import", str(tmp_path / "005_colorDN_DFWB_s128w8_SwinIR-M_noise15.pth"), "--name", "dn",
                 "--repository", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SwinIR without an upsampler" in err


def test_hostile_pickle_in_a_release_wrapper_runs_nothing(tmp_path, capsys):
    """A ``params_ema`` file whose pickle would call os.system: refused, the command never runs."""
    import pickle

    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    with open(tmp_path / "HAT-S_SRx4.pth", "wb") as f:
        pickle.dump({"params_ema": {"conv_first.weight": Hostile()}}, f, protocol=2)
    assert main(["import", str(tmp_path / "HAT-S_SRx4.pth"), "--name", "h", "--repository", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "refusing" in err and "system" in err and not marker.exists()
