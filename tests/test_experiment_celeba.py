"""The CelebA experiment: config, overlays, `celeba.py --synthetic --tiny` end to end, resume, errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fpn_jax import checkpoint, latents
from fpn_jax.errors import UsageError
from fpn_jax.evaluation import attributes
from fpn_jax.experiments import celeba
from fpn_jax.train import step as step_lib

pytest.importorskip("PIL.Image", reason="CelebA reading needs Pillow")
ROOT = Path(__file__).resolve().parents[1]


def _command_line():
    """experiments/celeba.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("celeba_command_line", ROOT / "experiments" / "celeba.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_are_the_papers_settings():
    full = celeba.Config()
    assert (full.maf_hidden, full.maf_layers, full.maf_blocks, full.maf_embedding, full.maf_batch_norm,
            full.maf_batch_size, full.maf_patience) == (1024, 10, 10, 512, True, 512, 25)
    assert (full.rnvp_hidden, full.rnvp_layers, full.rnvp_blocks, full.rnvp_batch_size, full.rnvp_patience) == \
        (1000, 5, 2, 1024, 50)
    assert full.plugin_learning_rate == 1e-3 and full.latents == "sample"
    np.testing.assert_allclose(full.temperatures, np.linspace(0.7, 0.8, 11))
    assert full.samples_per_temperature == 4 and full.figure_rows == tuple(range(3, 10))
    names, rows = celeba.contexts(full)
    assert len(names) == 43 and rows.shape == (43, 40)
    for combination, row in zip(full.combinations, rows[:3], strict=True):  # Male 20, No_Beard 24, Young 39 ...
        assert set(np.flatnonzero(row)) == {celeba.ATTRIBUTES.index(a) for a in combination}
    assert [set(np.flatnonzero(r)) for r in rows[:3]] == [{20, 24, 39}, {20, 24, 35, 39}, {20, 21, 24, 39}]
    np.testing.assert_array_equal(rows[3:], np.eye(40))
    offline = celeba.synthetic()
    assert offline.synthetic and offline.train_base and offline.checkpoint is None
    flow = celeba.make_plugin("maf", celeba.tiny(), 16)
    assert flow.config["embedding_features"] == 8 and flow.config["batch_norm_between"]


def test_command_line_flags_land_in_the_config():
    cli = _command_line()
    assert cli.parse(["--data-dir", "d", "--checkpoint", "c"]) == celeba.Config(data_dir="d", checkpoint="c")
    assert cli.parse(["--synthetic"]) == celeba.synthetic()
    assert cli.parse(["--synthetic", "--tiny", "--out", "o", "--plugin", "rnvp", "--seed", "2", "--latents", "mean",
                      "--maf-epochs", "7", "--rnvp-epochs", "8", "--edit-images", "3"]) == \
        dataclasses.replace(celeba.tiny(), out="o", plugins=("rnvp",), seed=2, latents="mean", maf_epochs=7,
                            rnvp_epochs=8, edit_images=3)
    assert cli.parse(["--data-dir", "d", "--train-base", "--image-size", "64", "--base-epochs", "3",
                      "--source", "tfds"]) == \
        celeba.Config(data_dir="d", train_base=True, image_size=64, base_epochs=3, data_source="tfds")
    for argv in (["--tiny"], ["--synthetic", "--checkpoint", "c"], ["--checkpoint", "c", "--train-base"],
                 ["--latents", "mode"], ["--data-dir", "d", "--maf-epochs", "0"]):
        with pytest.raises(SystemExit):
            cli.parse(argv)


@pytest.mark.parametrize("field, value", [
    ("plugins", ("flow",)), ("latents", "median"), ("maf_layers", 0), ("temperatures", ()),
    ("combinations", (("Male", "Beard"),)), ("figure_rows", ()), ("maf_patience", 0), ("msp_edit_strength", -1.0),
    ("data_source", "web"), ("classifier_channels", (8, 0)),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        celeba.Config(**{field: value})


def test_missing_data_or_model_say_what_to_do(tmp_path, capsys):
    cli = _command_line()
    with pytest.raises(UsageError, match="--data-dir .* --synthetic"):
        celeba.data_root(celeba.Config())
    with pytest.raises(UsageError, match="--checkpoint .* --train-base"):
        celeba.base_model(celeba.Config(data_dir="d"), None)
    with pytest.raises(UsageError, match="--checkpoint"):
        celeba.base_model(celeba.Config(checkpoint=str(tmp_path / "absent")), None)
    assert cli.main(["--data-dir", str(tmp_path / "absent"), "--source", "folder", "--train-base",
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_malformed_list_file_is_a_usage_error_naming_the_file(tmp_path):
    config = dataclasses.replace(celeba.tiny(), out=str(tmp_path / "run"), data_dir=str(tmp_path / "data"),
                                 synthetic_images=12)
    root = celeba.data_root(config)  # writes the stand-in
    celeba.open_celeba(config, root, 16)
    listing = tmp_path / "data" / "celeba" / "list_eval_partition.txt"
    listing.write_text(listing.read_text().replace(" 0\n", " 7\n", 1))
    with pytest.raises(UsageError, match="list_eval_partition.txt"):
        celeba.open_celeba(config, root, 16)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("celeba") / "run"
    return out, celeba.train_and_evaluate(celeba.tiny(), out)


def test_tiny_run_writes_metrics_report_and_figures(tiny_run):
    out, metrics = tiny_run
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["data"] | {"train_rates": None} == {
        "train": 128, "validation": 16, "test": 16, "image_size": 16, "synthetic": True, "source": "folder",
        "root": str(out / "synthetic_celeba"), "latents": "sample", "train_rates": None}
    assert metrics["attributes"] == list(celeba.ATTRIBUTES)
    assert metrics["base_model"]["latent_features"] == 16 and not metrics["base_model"]["cached"]
    for block in (metrics["majority"], metrics["probe"], metrics["classifier"]["test"],
                  metrics["classifier"]["reconstructions"]):
        assert len(block["accuracy"]) == 40 and 0 <= block["accuracy_mean"] <= 1
    edit_keys = {"rows", "non_finite", "mean", "success", "before", "moved", "kept"}
    assert set(metrics["msp_edits"]) == edit_keys and metrics["msp_edits"]["rows"] == 6
    for plugin in celeba.PLUGINS:
        result = metrics["results"][plugin]
        assert math.isfinite(result["test_nll"]) and result["epochs"] == 2 and result["parameters"] > 0
        assert result["bayes"]["rows"] == 16
        for prior in ("uniform", "prior"):
            assert len(result["bayes"][prior]["accuracy"]) == 40
        assert set(result["edits"]) == edit_keys
        assert all(0 <= v <= 1 for k in ("success", "before", "moved", "kept") for v in result["edits"][k])
        generation = result["generation"]
        assert generation["contexts"] == 43 and generation["temperatures"] == [0.7, 0.8]
        assert set(generation["per_context"]) >= {"Male+No_Beard+Young", "Smiling"}
        assert len(generation["context_figures"]) == 3
        for figure in generation["context_figures"]:
            assert (out / figure).stat().st_size > 1000
    report = (out / "report.md").read_text()
    for figure in ("samples_maf.png", "samples_rnvp.png", "manipulation_maf.png", "manipulation_rnvp.png",
                   "manipulation_msp.png", "attribute_prediction.png", "edit_success.png", "edit_kept.png",
                   "training_curves.png"):
        assert (out / figure).stat().st_size > 1000, figure
        assert f"({figure})" in report, figure
    assert "| FPN C-MAF |" in report and "| MSP (linear edit) |" in report and "| Wearing_Hat |" in report
    # the plugin's Bayes ratios are what log_prob says, attribute by attribute
    flow = checkpoint.load(out / "plugins" / "sample" / "maf" / "best")
    z, y = latents.read_shards(out / "latents" / "sample" / "test")
    flipped = y.copy()
    flipped[:, 20] = 1 - flipped[:, 20]
    direct = np.asarray(flow.log_prob(z, y)) - np.asarray(flow.log_prob(z, flipped))
    assert metrics["results"]["maf"]["bayes"]["uniform"]["accuracy"][20] == round(float(np.mean(direct > 0)), 4)


def test_a_second_run_trains_nothing_and_encodes_only_a_lost_shard(tiny_run, monkeypatch):
    out, first = tiny_run
    lost = out / "latents" / "sample" / "test" / "z_00000.npy"
    kept = np.load(lost)
    lost.unlink()  # as if the run had died while writing this shard
    encoded = []
    original = latents.encode
    monkeypatch.setattr(latents, "encode", lambda model, x, **kw: encoded.append(len(x)) or original(model, x, **kw))

    def no_training(*args, **kwargs):
        raise AssertionError("a second run must not train anything")

    monkeypatch.setattr(step_lib, "make_train_step", no_training)
    second = celeba.train_and_evaluate(celeba.tiny(), out)
    assert encoded == [16]  # only the lost shard, the test split's 16 rows
    np.testing.assert_array_equal(np.load(lost), kept)  # re-encoded exactly (per-shard keys)
    assert second["base_model"]["cached"] and second["classifier"]["cached"] and second["probe"]["cached"]
    for plugin in celeba.PLUGINS:
        assert second["results"][plugin]["cached"]
        for key in ("test_nll", "bayes", "edits", "epochs", "best_epoch"):
            assert second["results"][plugin][key] == first["results"][plugin][key], key
    assert second["msp_edits"] == first["msp_edits"]


def test_a_checkpoint_that_is_no_msp_is_refused(tiny_run):
    out, _ = tiny_run
    not_msp = out / "cache" / "attribute_cnn" / "best"
    with pytest.raises(UsageError, match="--checkpoint"):
        celeba.base_model(celeba.Config(data_dir="d", checkpoint=str(not_msp)), None)
    assert isinstance(checkpoint.load(not_msp), attributes.AttributeCNN)


def test_the_benchmark_counts_the_papers_plugins_without_allocating_them(capsys):
    spec = importlib.util.spec_from_file_location("celeba_flow_benchmark", ROOT / "benchmarks" / "celeba_flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert 325e6 < module.parameter_count("maf") < 335e6  # the "about 330 M parameters"
    assert module.main(["--steps", "0"]) == 0
    table = capsys.readouterr().out
    assert "| C-MAF | 331.1 M | 1.32 GB | 3.97 GB | 512 |" in table and "| C-RealNVP |" in table
