"""Server settings: defaults, SR_ environment variables, config files, flags over both, one-line
errors; ``srserve serve`` refuses a bad configuration before starting."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from srserve.service.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("SR_"):
            monkeypatch.delenv(key)


def test_defaults_serve_the_repository_on_cpu_locally():
    s = load_settings()
    assert (s.host, s.port, s.device, s.backend, s.precision) == ("127.0.0.1", 8000, "cpu", "auto", "auto")
    assert s.repository == Path("model_repository") and s.models == [] and s.api_keys == []
    assert s.batch_tiles == 1  # CPU: one tile per backend call
    assert Settings(device="cuda").batch_tiles == 8 and Settings(device="cuda", max_batch_tiles=3).batch_tiles == 3


def test_environment_file_and_flags_precedence(tmp_path, monkeypatch):
    config = tmp_path / "srserve.yaml"
    config.write_text("port: 9000\nmax_delay_ms: 7\nmodels: [edsr, mdsr]\ncors_origins: ['https://a.example']\n")
    monkeypatch.setenv("SR_CONFIG_FILE", str(config))
    monkeypatch.setenv("SR_MAX_DELAY_MS", "3")
    monkeypatch.setenv("SR_API_KEYS", "k1, k2")
    s = load_settings(port=9100)
    assert s.port == 9100  # flag over file
    assert s.max_delay_ms == 3  # environment over file
    assert s.models == ["edsr", "mdsr"] and s.cors_origins == ["https://a.example"]  # file
    assert s.api_keys == ["k1", "k2"]  # comma-separated environment list
    assert "k1" not in str(s.public())  # secrets stay out of logs
    other = tmp_path / "other.json"
    other.write_text('{"port": 9200, "api_keys": ["x"]}')
    assert load_settings(config_file=other).port == 9200  # --config over SR_CONFIG_FILE
    toml = tmp_path / "c.toml"
    toml.write_text('device = "cuda:1"\nmax_batch_tiles = 16\n')
    assert load_settings(config_file=toml).max_batch_tiles == 16


@pytest.mark.parametrize("content,suffix,message", [
    ("max_dely_ms: 5\n", ".yaml", "max_dely_ms"),
    ("port: 99999\n", ".yaml", "port"),
    ("device: tpu\n", ".yaml", "device"),
    ("backend: tensorflow\n", ".yaml", "backend"),
    ("{not json", ".json", "not valid json"),
    ("port = 1", ".ini", "use .yaml"),
    ("- a\n- b\n", ".yaml", "mapping"),
])
def test_bad_configuration_is_one_line(tmp_path, content, suffix, message):
    path = tmp_path / f"c{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(config_file=tmp_path / "none.yaml")


def test_serve_refuses_unknown_model_in_one_line(tmp_path):
    srserve = str(Path(sys.executable).parent / "srserve")
    result = subprocess.run([srserve, "serve", "--repository", str(tmp_path), "--models", "nosuch", "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("srserve serve: error: no model 'nosuch'")
    bad = subprocess.run([srserve, "serve", "--max-batch-tiles", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "max_batch_tiles" in bad.stderr and "Traceback" not in bad.stderr


def test_readme_documents_every_setting_and_metric():
    from srserve.service.metrics import Metrics

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    serving = readme[readme.index("## Serving"):]
    for name in Settings.model_fields:
        assert f"`SR_{name.upper()}`" in serving, name
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in serving, name
