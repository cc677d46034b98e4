"""The pixel-flow vs. FPN experiment: its config, command line, and `experiments/image_flow.py --quick` end to end."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from fpn_jax.data import Dataset, Split
from fpn_jax.experiments import image_flow, mnist, stages

ROOT = Path(__file__).resolve().parents[1]
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _command_line():
    """experiments/image_flow.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("image_flow_command_line", ROOT / "experiments" / "image_flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line_is_the_quick_overlay_then_the_flags():
    cli = _command_line()
    assert cli.parse([]) == image_flow.Config()
    assert cli.parse(["--quick"]) == image_flow.quick()
    assert image_flow.Config().out == "runs/image_flow/mnist"
    assert image_flow.quick().out == "runs/image_flow/mnist-quick"
    parsed = cli.parse(["--quick", "--dataset", "fashion_mnist", "--data-dir", "d", "--seed", "3", "--epochs", "2",
                        "--cache-dir", "c", "--out", "o"])
    expected = dataclasses.replace(
        image_flow.quick(image_flow.Config(dataset="fashion_mnist", data_dir="d", seed=3)),
        out="o", flow_epochs=2, cache_dir="c",
    )
    assert parsed == expected and cli.parse(["--dataset", "fashion_mnist"]).out == "runs/image_flow/fashion_mnist"
    # The shared parts run with the MNIST experiment's config: quick runs keep their models in the run folder.
    quick = image_flow.quick()
    shared = image_flow.mnist_config(quick)
    assert isinstance(shared, mnist.Config) and shared.subset == (1000, 500, 500) and shared.bases == ("conv_ae",)
    assert quick.model_cache == Path("runs/image_flow/mnist-quick/cache")
    assert quick.temperatures == (1.0, 0.7)


def test_command_line_sets_the_flow_and_plugin_sizes():
    cli = _command_line()
    parsed = cli.parse(["--hidden-channels", "16", "--steps-per-scale", "3", "--num-blocks", "2",
                        "--self-conditioned-epochs", "4", "--plugin-epochs", "20", "--plugin-patience", "none",
                        "--bayes-test-size", "300"])
    assert parsed == dataclasses.replace(image_flow.Config(), hidden_channels=16, steps_per_scale=3, num_blocks=2,
                                         self_conditioned_epochs=4, plugin_epochs=20, plugin_patience=None,
                                         bayes_test_size=300)
    assert cli.parse(["--plugin-patience", "9"]).plugin_patience == 9
    assert cli.parse([]).plugin_patience == "paper" == mnist.Config().plugin_patience
    # The defaults: the tutorial's training (5 epochs, Adam 1e-3, batch 64) of a CPU-sized flow.
    full = image_flow.Config()
    assert (full.flow_epochs, full.flow_learning_rate, full.flow_batch_size) == (5, 1e-3, 64)
    for bad in ("0", "soon"):
        with pytest.raises(SystemExit):
            cli.parse(["--plugin-patience", bad])


@pytest.mark.parametrize("field, value", [
    ("flow_epochs", 0), ("temperatures", ()), ("temperatures", (1.0, -0.5)), ("bayes_test_size", 0),
    ("num_blocks", -1), ("flow_learning_rate", 0.0), ("bases", ("pca",)), ("dataset", "cifar"),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        image_flow.Config(**{field: value})


def test_plugins_from_a_mnist_run_are_loaded_read_only_and_must_match(tmp_path):
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        labels = rng.integers(0, 10, n).astype(np.int32)
        return Split(inputs=np.zeros((n, 1), np.float32), context=np.eye(10, dtype=np.float32)[labels], labels=labels)

    data = Dataset(train=split(200), validation=split(100), test=split(100), num_classes=10)
    z = {s: rng.normal(size=(len(getattr(data, s)), 40)).astype(np.float32) for s in stages.SPLITS}
    base = types.SimpleNamespace(latent_features=40)  # fit_plugin reads only the latent size of the base
    base_info = {"cached": True, "best_epoch": 3, "val_loss": 0.0251}
    config = image_flow.Config(bases=("conv_ae",), plugins=("maf",), plugin_epochs=2, plugin_batch_size=50)
    run = tmp_path / "runs" / "mnist"
    trained, history, cached = mnist.fit_plugin("conv_ae", "maf", base, z, data, image_flow.mnist_config(config),
                                                run / "plugins" / "conv_ae_maf", base_info)
    assert not cached and len(history.train_loss) == 2

    # Taken from the MNIST run: loaded (same parameters, same history), nothing trained or written.
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    here = tmp_path / "image_flow_run"
    from_run = dataclasses.replace(config, plugins_from=str(run))
    loaded, again, cached = image_flow.fit_plugin("conv_ae", "maf", base, z, data, from_run, here, base_info)
    assert cached and again.train_loss == history.train_loss and again.seconds == history.seconds
    for a, b in zip(jax.tree.leaves(nnx.state(trained, nnx.Param)), jax.tree.leaves(nnx.state(loaded, nnx.Param)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == files and not here.exists()
    # Without --plugins-from the same call trains into this run's own folder.
    _, _, cached = image_flow.fit_plugin("conv_ae", "maf", base, z, data, config, here, base_info)
    assert not cached and (here / "models" / "conv_ae_maf" / "training.json").exists()

    # A plugin of another base model, seed or epoch cap is refused, naming what differs.
    with pytest.raises(ValueError, match=r"base_model \({'best_epoch': 3, 'val_loss': 0.0251} there"):
        image_flow.fit_plugin("conv_ae", "maf", base, z, data, from_run, here, base_info | {"val_loss": 0.03})
    with pytest.raises(ValueError, match="other seed"):
        image_flow.fit_plugin("conv_ae", "maf", base, z, data, dataclasses.replace(from_run, seed=1), here,
                              base_info)
    with pytest.raises(ValueError, match="other train"):
        image_flow.fit_plugin("conv_ae", "maf", base, z, data, dataclasses.replace(from_run, plugin_epochs=3),
                              here, base_info)
    with pytest.raises(ValueError, match="no finished training there"):
        image_flow.fit_plugin("conv_ae", "rnvp", base, z, data, from_run, here, base_info)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == files


def test_helpers():
    x = np.asarray([[0.0, 1.0 / 255, 0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(image_flow.pixel_levels(x), [[0, 1, 128, 255]])
    grids = [np.zeros((3, 2, 4, 4, 1)), np.zeros((3, 5, 4, 4, 1))]
    both = image_flow._side_by_side(grids)
    assert both.shape == (3, 8, 4, 4, 1) and np.all(both[:, 2] == 1.0)  # a blank column between the two


@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason=f"no MNIST files in {MNIST}")
def test_quick_run_writes_report_metrics_and_figures(tmp_path):
    out = tmp_path / "run"
    flags = ["--quick", "--data-dir", str(MNIST), "--out", str(out)]
    home = tmp_path / "fpn_jax_home"  # the shared model cache: a quick run must leave it alone
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "image_flow.py"), *flags], capture_output=True,
                         text=True, timeout=900, cwd=tmp_path, env=os.environ | {"FPN_JAX_HOME": str(home)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert not home.exists() and (out / "cache" / "conv_ae" / "best").is_dir() and (out / "cache" / "judge").is_dir()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"] == stages.config_record(_command_line().parse(flags))
    assert metrics["data"] == {"train": 1000, "validation": 500, "test": 500, "num_classes": 10}
    approaches = metrics["approaches"]
    assert set(approaches) == {image_flow.PIXEL_FLOW, "conv_ae_maf", image_flow.SELF_CONDITIONED}

    def accuracy(value):
        return isinstance(value, float) and 0.0 <= value <= 1.0

    for tag, a in approaches.items():
        assert isinstance(a["parameters_trained"], int) and a["parameters_trained"] > 0, tag
        assert a["train_seconds"] > 0 and a["epochs"] >= 1, tag
        assert set(a["generation"]) == {"1.0", "0.7"}, tag
        for generation in a["generation"].values():
            assert accuracy(generation["generation_accuracy"]), tag
            assert all(0.0 <= v <= 1.0 for v in generation["generation_accuracy_per_class"])
        if tag != image_flow.SELF_CONDITIONED:
            assert accuracy(a["bayes"]["test_accuracy"]), tag
            assert len(a["bayes"]["test_accuracy_per_class"]) == 10
            assert len(a["generation"]["1.0"]["generation_accuracy_per_class"]) == 10
    for tag in (image_flow.PIXEL_FLOW, image_flow.SELF_CONDITIONED):
        bpd = approaches[tag]["test_bits_per_dim"]
        assert math.isfinite(bpd) and 0 < bpd < 9, tag  # 8 bits/dim is a uniform density; ~5.9 after one epoch
    pixel, plugin = approaches[image_flow.PIXEL_FLOW], approaches["conv_ae_maf"]
    assert pixel["bayes"]["images"] == 100 and plugin["bayes"]["same_subset_images"] == 100
    # The base was trained in this run: it counts, with its training time.
    assert plugin["base_cached"] is False and plugin["base_train_seconds"] > 0
    assert plugin["parameters_trained"] == plugin["parameters_plugin"] + plugin["parameters_base"]
    assert plugin["train_seconds"] == pytest.approx(plugin["plugin_train_seconds"] + plugin["base_train_seconds"],
                                                    abs=0.11)
    assert plugin["bayes"]["test_accuracy"] > 0.3  # 0.80 at seed 0 (chance 0.1)
    assert "total" in metrics["timings"]

    report = (out / "report.md").read_text()
    assert "(quick subset)" in report and "| Conditional image flow (pixels) |" in report
    assert "| FPN: ConvAE + C-MAF |" in report and "conditioned on the image itself" in report
    for name in ["samples_pixel_flow.png", "samples_conv_ae_maf.png", "samples_self_conditioned.png",
                 "samples_combined_t1.0.png", "samples_combined_t0.7.png"]:
        assert name in report and (out / name).stat().st_size > 1000, name
