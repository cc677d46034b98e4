"""The MNIST attribute-manipulation experiment: config, command line, MSP's edit, and a small run end to end."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from fpn_jax.autoencoders.msp import MSP
from fpn_jax.experiments import mnist_attributes as experiment

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def _command_line():
    spec = importlib.util.spec_from_file_location("mnist_attributes_cli", ROOT / "experiments" / "mnist_attributes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line_is_the_config_and_quick_overlay():
    cli = _command_line()
    assert cli.parse([]) == experiment.Config()
    assert cli.parse(["--quick"]) == experiment.quick()
    parsed = cli.parse(["--quick", "--data-dir", "d", "--out", "o", "--base", "msp", "--base", "conv_ae", "--plugin",
                        "maf", "--attributes", "thick", "tall", "--edit-images", "7", "--msp-epochs", "2"])
    assert parsed == dataclasses.replace(experiment.quick(experiment.Config(data_dir="d")), out="o",
                                         bases=("msp", "conv_ae"), plugins=("maf",), attributes=("thick", "tall"),
                                         edit_images=7, msp_epochs=2)


@pytest.mark.parametrize(("changes", "message"), [
    ({"bases": ("vae",)}, "bases"), ({"attributes": ("thick", "thick")}, "attributes"),
    ({"attributes": ("bold",)}, "attributes"), ({"subset": (1, 2)}, "subset"), ({"edit_images": 0}, "edit_images"),
    ({"msp_edit_strength": -1.0}, "msp_edit_strength"), ({"plugin_patience": 0}, "plugin_patience"),
])
def test_config_errors_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        experiment.Config(**changes)


def test_msp_images_and_edit():
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    padded = experiment.to_msp_images(x)
    assert padded.shape == (3, 32, 32, 1) and padded.min() >= -1 and padded.max() <= 1
    np.testing.assert_allclose(experiment._as_mnist_images(padded, "msp"), x, atol=1e-6)
    assert (padded[:, :2] == -1).all() and (padded[:, :, -2:] == -1).all()  # black border

    model = MSP(32, 4, 12, nc=1, rngs=nnx.Rngs(0))
    z = np.asarray(jax.random.normal(jax.random.key(1), (5, model.latent_features)))
    y = np.zeros((5, 12), np.float32)
    y[:, 10] = [0, 1, 0, 1, 1]
    edited = experiment.edit_latents_msp(model, z, y, [10, 11], 1.5)
    assert edited.shape == (2, 5, model.latent_features)
    m = np.asarray(model.M[...])
    # with M's rows not orthonormal, the requested score is reached only approximately; the edit is along M's rows
    d = np.linalg.lstsq(m.T, (edited[0] - z).T, rcond=None)[0].T
    np.testing.assert_allclose(d[:, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11]], 0, atol=1e-4)
    np.testing.assert_allclose(d[:, 10], 1.5 * (1 - 2 * y[:, 10]) - (z @ m.T)[:, 10], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not MNIST.exists(), reason="needs the MNIST IDX files in ../shared/data/mnist")
def test_small_run_end_to_end_and_resumed(tmp_path):
    config = dataclasses.replace(
        experiment.quick(experiment.Config(data_dir=str(MNIST))), subset=(400, 150, 120), base_epochs=1,
        msp_epochs=1, judge_epochs=1, plugin_epochs=2, edit_images=40, samples_per_context=1, probe_epochs=2,
        figure_digits=3, bases=("msp", "conv_ae"),  # the ConvVAE runs as the ConvAE does (time)
    )
    record = experiment.train_and_evaluate(config, tmp_path / "run")
    out = tmp_path / "run"
    assert json.loads((out / "metrics.json").read_text())["results"].keys() == set(config.bases)
    report = (out / "report.md").read_text()
    assert "| FPN C-MAF | FPN C-RealNVP | MSP edit |" in report
    for base in config.bases:
        assert (out / f"edits_{base}.png").exists()
        result = record["results"][base]
        methods = ("maf", "rnvp", "msp") if base == "msp" else ("maf", "rnvp")
        assert tuple(result["methods"]) == methods
        for method in methods:
            scores = result["methods"][method]
            directions = scores["per_direction"]
            assert len(directions) == 2 * len(config.attributes)
            for attribute in config.attributes:  # every edited image is in exactly one direction per attribute
                assert sum(e["rows"] for e in directions.values() if e["attribute"] == attribute) == 40
            for entry in directions.values():
                if entry["rows"]:
                    for key in ("success", "before", "others_kept", "class_kept"):
                        assert 0.0 <= entry[key] <= 1.0
        for plugin in ("maf", "rnvp"):
            p = result["plugins"][plugin]
            assert np.isfinite(p["test_nll"])
            assert p["generation"]["samples"] == 10 * 2 ** len(config.attributes)
            assert set(p["bayes"]["accuracy"]) == set(config.attributes)
        assert set(result["probe"]["accuracy"]) == set(config.attributes)
    medians = record["data"]["medians"]
    assert 1.0 < medians["thick"] < 5.0 and -0.5 < medians["slanted"] < 0.5 and 5 < medians["wide"] < 20

    # started again: everything is read back, and the numbers are the same
    again = experiment.train_and_evaluate(dataclasses.replace(config, bases=("conv_ae",)), out)
    assert again["results"]["conv_ae"]["plugins"]["rnvp"]["cached"]
    assert again["results"]["conv_ae"]["methods"] == record["results"]["conv_ae"]["methods"]
    assert again["results"]["conv_ae"]["base_model"]["cached"]
