"""The MNIST experiment: its config and quick overlay, and `python experiments/mnist.py --quick` end to end."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fpn_jax import autoencoders
from fpn_jax.evaluation import report as report_module
from fpn_jax.experiments import mnist, stages

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
CHANCE = 0.1  # ten balanced classes


def _command_line():
    """experiments/mnist.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("mnist_command_line", ROOT / "experiments" / "mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_overlay_is_what_dash_dash_quick_parses_to():
    cli = _command_line()
    assert cli.parse([]) == mnist.Config()
    assert cli.parse(["--quick"]) == mnist.quick() == mnist.quick(mnist.Config())
    # The overlay first, then every explicit flag (an explicit --base-epochs wins over the overlay's 3).
    flags = ["--quick", "--data-dir", "d", "--out", "o", "--base", "conv_ae", "--plugin", "rnvp", "--seed", "3",
             "--cache-dir", "c", "--base-epochs", "2", "--plugin-epochs", "5", "--vae-sample-latents", "--grid-search"]
    expected = dataclasses.replace(
        mnist.quick(mnist.Config(data_dir="d", seed=3)), out="o", bases=("conv_ae",), plugins=("rnvp",),
        cache_dir="c", base_epochs=2, plugin_epochs=5, vae_sample_latents=True, grid_search=True,
    )
    assert cli.parse(flags) == expected
    assert cli.parse(flags[1:]) == dataclasses.replace(expected, **{
        f.name: getattr(mnist.Config(), f.name) for f in dataclasses.fields(mnist.Config)
        if f.name not in ("data_dir", "out", "bases", "plugins", "seed", "cache_dir", "base_epochs", "plugin_epochs",
                          "vae_sample_latents", "grid_search")
    })

    # The overlay's values are those --quick always had, and it changes nothing else.
    quick, full = mnist.quick(), mnist.Config()
    changed = {f.name: getattr(quick, f.name) for f in dataclasses.fields(mnist.Config)
               if getattr(quick, f.name) != getattr(full, f.name)}
    assert changed == {
        "out": "runs/mnist-quick", "subset": (3000, 1000, 2000), "cache_in_out": True, "base_epochs": 3,
        "base_batch_size": 128, "judge_epochs": 1, "plugin_epochs": 15, "plugin_batch_size": 256,
        "samples_per_class": 100, "embedding_max_points": 500,
    }
    assert (full.base_epochs, full.base_batch_size, full.plugin_epochs, full.plugin_batch_size) == (10, 1024, 500, 1024)
    # Quick runs keep their models in their own folder, never in the shared model cache.
    assert quick.model_cache == Path("runs/mnist-quick/cache")
    assert dataclasses.replace(quick, out="elsewhere").model_cache == Path("elsewhere/cache")
    assert cli.parse(["--quick", "--out", "x"]).model_cache == Path("x/cache")
    assert full.model_cache == autoencoders.cache_dir()
    assert dataclasses.replace(quick, cache_dir="c").model_cache == Path("c")


def test_plugin_patience_is_the_original_codes_per_combination_unless_given():
    cli = _command_line()
    # configs/mnist/flow/conv-{vae,ae}-{maf,rnvp}.yaml of the original code: 50, 50, 50 and 100.
    full = mnist.Config()
    patience = {(b, p): mnist.plugin_train_config(full, b, p).patience for b in mnist.BASES for p in mnist.PLUGINS}
    assert patience == {("conv_vae", "maf"): 50, ("conv_vae", "rnvp"): 50, ("conv_ae", "maf"): 50,
                        ("conv_ae", "rnvp"): 100}
    assert mnist.plugin_train_config(full, "conv_ae", "rnvp").max_epochs == 500
    for given in (7, None):
        config = dataclasses.replace(full, plugin_patience=given)
        assert {mnist.plugin_train_config(config, b, p).patience for b in mnist.BASES for p in mnist.PLUGINS} == {given}
    assert cli.parse(["--plugin-patience", "7"]).plugin_patience == 7
    assert cli.parse(["--plugin-patience", "none"]).plugin_patience is None
    assert cli.parse(["--plugin-patience", "paper"]) == full
    for bad in ("0", "-3", "soon"):
        with pytest.raises(SystemExit):
            cli.parse(["--plugin-patience", bad])


@pytest.mark.parametrize("field, value", [
    ("bases", ("conv_vae", "pca")), ("plugin_patience", "never"),
    ("plugins", ()), ("subset", (3000, 1000)), ("plugin_epochs", 0),
    ("samples_per_class", 2.5), ("plugin_patience", 0), ("base_learning_rates", (("conv_vae", 1e-3),)),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        mnist.Config(**{field: value})


@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason=f"no MNIST files in {MNIST}")
def test_quick_run_writes_report_metrics_and_figures(tmp_path):
    # One base model keeps the suite's time down; the ConvVAE path is run by
    # tests/test_notebooks.py (mnist_colab_tpu trains a ConvVAE and a C-MAF on MNIST).
    out = tmp_path / "run"
    # 5 plugin epochs instead of --quick's 15: the pipeline, not the accuracy, is under test here.
    flags = ["--quick", "--data-dir", str(MNIST), "--plugin-epochs", "5", "--out", str(out), "--base", "conv_ae"]
    home = tmp_path / "fpn_jax_home"  # the shared model cache: a quick run must leave it alone
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "mnist.py"), *flags], capture_output=True,
                         text=True, timeout=900, cwd=tmp_path, env=os.environ | {"FPN_JAX_HOME": str(home)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert not home.exists() and (out / "cache" / "conv_ae" / "best").is_dir() and (out / "cache" / "judge").is_dir()
    metrics = json.loads((out / "metrics.json").read_text())

    # What ran is what the command line parsed, recorded in full.
    config = _command_line().parse(flags)
    assert metrics["config"] == stages.config_record(config)
    assert metrics["data"] == {"train": 3000, "validation": 1000, "test": 2000, "num_classes": 10}
    assert metrics["base_models"]["conv_ae"]["cached"] is False and metrics["base_models"]["conv_ae"]["epochs"] == 3
    assert 0 < metrics["base_models"]["conv_ae"]["val_loss"] < 0.05  # MSE per pixel: 0.028 at seed 0; mean image: 0.067
    # Chance is 0.1 for every accuracy below; the numbers measured at seed 0 are in the comments.
    assert metrics["judge"]["test_accuracy"] > 0.7  # 0.857 after one epoch on 3000 images
    for name, baseline in metrics["baselines"]["conv_ae"].items():
        assert baseline["test_accuracy"] > 0.8, name  # 0.89 (linear) to 0.945 (RBF SVM)
    for plugin in ("maf", "rnvp"):
        r = metrics["results"]["conv_ae"][plugin]
        assert math.isfinite(r["test_nll"]) and r["test_nll_per_dim"] == pytest.approx(r["test_nll"] / 40, rel=1e-5)
        # Bayes' rule after 5 epochs on 3000 latents: 0.875 (C-MAF) and 0.73 (C-RealNVP), train alike.
        for key in ("test_accuracy", "test_accuracy_prior", "train_accuracy"):
            assert r[key] > 5 * CHANCE, (plugin, key)
        # every class, not only the easy ones: worst class 0.785 (C-MAF), 0.54 (C-RealNVP)
        assert len(r["test_accuracy_per_class"]) == 10 and min(r["test_accuracy_per_class"]) > 2 * CHANCE
        # The judge sees the class the decoded samples were drawn for: 0.705 (C-MAF), 0.252 (C-RealNVP).
        assert r["generation_accuracy"] > 1.5 * CHANCE, plugin
        assert len(r["generation_accuracy_per_class"]) == 10 and r["non_finite_samples"] <= 10
        assert r["epochs"] == 5 and 0 <= r["best_epoch"] < 5
        assert (r["max_epochs"], r["patience"]) == (5, mnist.PAPER_PATIENCE[("conv_ae", plugin)])

    assert "total" in metrics["timings"]
    report = (out / "report.md").read_text()
    assert "(quick subset)" in report and "| ConvAE | C-MAF |" in report and "| ConvAE | C-RealNVP |" in report
    for figure in ["samples_conv_ae_maf.png", "samples_conv_ae_rnvp.png", "generation_accuracy.png",
                   "embedding_conv_ae.png", "reconstructions_conv_ae.png", "unconditional_conv_ae.png",
                   "training_curves.png"]:
        assert figure in report and (out / figure).stat().st_size > 1000
    assert "0.9677" in report  # the paper's number sits beside ours
    assert "| ConvAE | C-RealNVP | 5 |" in report and "| 100 | 5 | epoch cap |" in report  # why training stopped
    assert "Test accuracy above the paper's (uniform prior): 0 of 2. Generation accuracy >= 0.95: 0 of 2." in report
    # The same metrics as a Fashion-MNIST run's: the report names that data set, never MNIST.
    fashion = json.loads(json.dumps(metrics))
    fashion["config"]["dataset"] = "fashion_mnist"
    (tmp_path / "fashion").mkdir()
    fashion_report = report_module.write_mnist_report(tmp_path / "fashion", fashion).read_text()
    assert fashion_report.startswith("# Flow Plugin Networks on Fashion-MNIST\n")
    assert "the MNIST training" not in fashion_report

    # A second run (one combination, in this process) reuses the cached base model and judge: same numbers.
    # What train_and_evaluate returns is what metrics.json holds.
    second_config = dataclasses.replace(config, plugins=("rnvp",), cache_dir=str(out / "cache"))
    second = mnist.train_and_evaluate(second_config, tmp_path / "run2")
    assert json.loads((tmp_path / "run2" / "metrics.json").read_text()) == second
    assert second["config"]["out"] == str(tmp_path / "run2") and (tmp_path / "run2" / "report.md").exists()
    assert second["base_models"]["conv_ae"]["cached"] is True and second["judge"]["cached"] is True
    assert second["judge"]["test_accuracy"] == metrics["judge"]["test_accuracy"]
    for name, baseline in metrics["baselines"]["conv_ae"].items():
        again = second["baselines"]["conv_ae"][name]
        assert again["test_accuracy"] == pytest.approx(baseline["test_accuracy"], abs=1e-4)
    first, again = metrics["results"]["conv_ae"]["rnvp"], second["results"]["conv_ae"]["rnvp"]
    for key in ("test_accuracy", "test_nll", "generation_accuracy"):
        assert again[key] == pytest.approx(first[key], abs=1e-4), key


def test_missing_data_says_what_to_do(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "mnist.py"), "--quick", "--data-dir", str(tmp_path / "nothing"),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--data-dir" in run.stderr or "data_dir" in run.stderr


def test_report_says_why_each_plugin_stopped():
    def result(epochs, best, patience, cap):
        return {"epochs": epochs, "best_epoch": best, "patience": patience, "max_epochs": cap, "train_seconds": 1.0}

    metrics = {"results": {"conv_vae": {"maf": result(61, 10, 50, 500), "rnvp": result(500, 480, 50, 500)},
                           "conv_ae": {"maf": result(30, 29, None, 30), "rnvp": result(20, 19, 100, 500)}}}
    rows = report_module._plugin_training(metrics).splitlines()[-4:]
    assert [row.split(" | ")[6] for row in rows] == ["early stopping", "epoch cap", "epoch cap", "other"]
    assert rows[0].startswith("| ConvVAE | C-MAF | 61 | 11 | 50 | 500 |")
