"""The ShapeNet experiment: config, overlays, `shapenet.py --synthetic --tiny` end to end, resume, errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fpn_jax.errors import UsageError
from fpn_jax.experiments import shapenet, stages

ROOT = Path(__file__).resolve().parents[1]


def _command_line():
    """experiments/shapenet.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("shapenet_command_line", ROOT / "experiments" / "shapenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_are_the_papers_settings_and_the_overlays_only_shrink_them():
    full = shapenet.Config()
    assert (full.maf_hidden, full.maf_layers, full.maf_blocks, full.maf_dropout, full.maf_noise,
            full.maf_batch_size) == (1024, 5, 2, 0.2, 0.01, 4096)
    assert (full.rnvp_hidden, full.rnvp_layers, full.rnvp_blocks, full.rnvp_batch_size) == (1024, 5, 4, 256)
    assert (full.plugin_patience, full.points) == (50, 2048)
    offline = shapenet.synthetic()
    assert offline.synthetic and offline.train_base and offline.checkpoint is None
    # The plugins keep the paper's layers, blocks, dropout and noise offline (their width shrinks with the data).
    for name in ("maf_layers", "maf_blocks", "maf_dropout", "maf_noise", "rnvp_layers", "rnvp_blocks"):
        assert getattr(offline, name) == getattr(full, name), name


def test_command_line_flags_land_in_the_config():
    cli = _command_line()
    assert cli.parse(["--data-dir", "d", "--checkpoint", "c"]) == shapenet.Config(data_dir="d", checkpoint="c")
    assert cli.parse(["--synthetic"]) == shapenet.synthetic()
    assert cli.parse(["--synthetic", "--tiny", "--out", "o", "--plugin", "rnvp", "--seed", "2"]) == \
        dataclasses.replace(shapenet.tiny(), out="o", plugins=("rnvp",), seed=2)
    assert cli.parse(["--data-dir", "d", "--train-base", "--categories", "airplane, chair"]).categories == \
        ("airplane", "chair")
    with pytest.raises(SystemExit):
        cli.parse(["--tiny"])  # --tiny goes with --synthetic


@pytest.mark.parametrize("field, value", [("points", 0), ("plugins", ("flow",)), ("maf_dropout", 1.0),
                                          ("generation_metrics", ("l2",)), ("decode_solver", "euler")])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        shapenet.Config(**{field: value})
    with pytest.raises(ValueError, match="not both"):
        shapenet.Config(checkpoint="c", train_base=True)


def test_missing_data_or_model_say_what_to_do(tmp_path, capsys):
    cli = _command_line()
    with pytest.raises(UsageError, match="--data-dir .* --synthetic"):
        shapenet.load_data(shapenet.Config())
    assert cli.main(["--data-dir", str(tmp_path / "absent"), "--train-base", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--checkpoint .* --train-base"):
        shapenet.base_model(shapenet.Config(data_dir="d"), None)


def test_malformed_cloud_file_is_a_usage_error_naming_the_file(tmp_path):
    config = dataclasses.replace(shapenet.tiny(), out=str(tmp_path / "run"), data_dir=str(tmp_path / "data"))
    shapenet.load_data(config)  # writes the stand-in
    victim = sorted((tmp_path / "data").glob("*/train/*.npy"))[0]
    np.save(victim, np.zeros((120, 2), np.float32))
    with pytest.raises(UsageError, match=victim.name.removesuffix(".npy")):
        shapenet.load_data(config)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapenet") / "run"
    return out, shapenet.train_and_evaluate(shapenet.tiny(), out)


def test_tiny_run_writes_table_2_generation_metrics_and_figures(tiny_run):
    out, metrics = tiny_run
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["data"]["num_classes"] == 8 and metrics["data"]["synthetic"]
    assert set(metrics["baselines"]) >= {"logistic_regression", "rbf_svm"}
    for plugin in shapenet.PLUGINS:
        result = metrics["results"][plugin]
        for key in ("test_accuracy", "test_accuracy_prior", "train_accuracy"):
            assert 0 <= result[key] <= 1
        assert len(result["test_accuracy_per_class"]) == 8 and math.isfinite(result["test_nll"])
        generation = result["generation"]
        assert generation["classes"] == 8 and set(generation["mean"]) == {"MMD-CD", "COV-CD", "1-NNA-CD", "JSD"}
        assert 0 <= generation["mean"]["COV-CD"] <= 1 and 0 <= generation["mean"]["1-NNA-CD"] <= 1
    assert set(metrics["ceiling"]["mean"]) == {"MMD-CD", "COV-CD", "1-NNA-CD", "JSD"}
    assert metrics["reconstruction"]["chamfer_mean"] > 0
    report = (out / "report.md").read_text()
    for figure in ("samples_maf.png", "samples_rnvp.png", "reconstructions.png", "embedding.png",
                   "training_curves.png", "classification_per_class.png"):
        assert (out / figure).stat().st_size > 1000
        assert f"({figure})" in report
    assert "| FPN C-MAF |" in report and "0.8643" in report  # the paper's RBF SVM beside ours


def test_a_second_run_reuses_base_model_latents_and_plugins(tiny_run, monkeypatch):
    out, first = tiny_run
    calls = []
    monkeypatch.setattr(stages.latents, "encode", lambda *a, **k: calls.append(a) or None)
    second = shapenet.train_and_evaluate(shapenet.tiny(), out)
    assert calls == []  # every split's latents came from disk
    assert second["base_model"]["cached"] is True
    for plugin in shapenet.PLUGINS:  # finished trainings are not repeated: same result
        assert second["results"][plugin]["test_accuracy"] == first["results"][plugin]["test_accuracy"]
        assert second["results"][plugin]["epochs"] == first["results"][plugin]["epochs"]


def test_cached_latents_encode_only_what_is_missing_or_stale(tiny_run, monkeypatch):
    out, _ = tiny_run
    config = shapenet.tiny()
    data = shapenet.load_data(dataclasses.replace(config, out=str(out)))
    model, _ = shapenet.base_model(dataclasses.replace(config, out=str(out)), data)
    folder = out / "latents"
    encoded = []
    original = stages.latents.encode

    def counting(model, x, **kwargs):
        encoded.append(len(x))
        return original(model, x, **kwargs)

    monkeypatch.setattr(stages.latents, "encode", counting)
    fingerprint = json.loads((folder / "fingerprint.json").read_text())
    (folder / "test.npy").unlink()  # as if the run had stopped before the test split
    z = stages.cached_latents(folder, model, data, fingerprint=fingerprint, progress=False)
    assert encoded == [len(data.test)]
    np.testing.assert_allclose(z["test"], np.load(folder / "test.npy"))
    assert not list(folder.glob(".*tmp*"))  # no temporary file left behind
    stages.cached_latents(folder, model, data, fingerprint=fingerprint | {"points": 1}, progress=False)
    assert encoded == [len(data.test), len(data.train), len(data.validation), len(data.test)]
