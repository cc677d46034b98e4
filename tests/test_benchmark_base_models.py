"""The base-model benchmark (``benchmarks/base_models.py``): its quick mode writes well-formed
results; the step it times is ``fpn_jax.autoencoders.fit``'s; its torch loss is fpn-jax's."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import OPTIMIZED_XLA
from flax import nnx

from fpn_jax import autoencoders

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "base_models.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
BIASES_BEFORE_BATCH_NORM = ("conv_1", "conv_2", "deconv_1", "deconv_2", "deconv_3")  # ConvVAE / ConvAE


def _load_benchmark():
    name = "benchmark_base_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_run_writes_json_and_table(tmp_path):
    # One row keeps the test short (compiling dominates): MSP's (labels, gradient clipping); the
    # ConvVAE's steps and the torch losses of all three are checked below.
    models = ["msp"]
    command = [sys.executable, str(SCRIPT), "--quick", "--models", *models, "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=os.environ | OPTIMIZED_XLA)
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((tmp_path / "base_models-quick.json").read_text())
    assert result["quick"] and result["batch_size"] == 64 and result["repeats"] == 2
    assert result["torch"] == HAS_TORCH and (result["torch_note"] == "") == HAS_TORCH
    assert _positive_finite(result["threads"])
    assert [row["model"] for row in result["rows"]] == models
    sides = ["per-step", "scanned"] + (["torch"] if HAS_TORCH else [])
    for row in result["rows"]:
        assert row["images_per_call"] == row["batch_size"] * row["steps_per_call"] > 0
        assert len(row["loadavg_1min"]) == result["repeats"]
        assert ("torch" in row) == HAS_TORCH
        for name in sides:
            side = row[name]
            for key in ("images_per_s", "seconds_per_step", "seconds_per_call"):
                assert _positive_finite(side[key]), (row["model"], name, key, side[key])
            assert len(side["seconds_all_repeats"]) == result["repeats"]
            assert all(_positive_finite(s) for s in side["seconds_all_repeats"] + side["warm_up_calls_s"])
            median = np.median(side["seconds_all_repeats"])
            assert side["images_per_s"] == pytest.approx(row["images_per_call"] / median)
            assert side["seconds_per_step"] == pytest.approx(side["seconds_per_call"] / row["steps_per_call"])
            if name != "torch":
                assert math.isfinite(side["compile_s"]) and side["compile_s"] >= 0
        rate = {name: row[name]["images_per_s"] for name in sides}
        assert row["ratio_per_step_vs_scanned"] == pytest.approx(rate["per-step"] / rate["scanned"])
        if HAS_TORCH:
            assert row["ratio_per_step_vs_torch"] == pytest.approx(rate["per-step"] / rate["torch"])
            assert row["ratio_scanned_vs_torch"] == pytest.approx(rate["scanned"] / rate["torch"])

    table = (tmp_path / "base_models-quick.md").read_text().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:4] == ["model", "batch", "per-step img/s", "scanned img/s"]
    assert ("torch img/s" in header) == HAS_TORCH
    body = [line for line in table[2:] if line.startswith("|")]
    assert len(body) == len(models)
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header)
        assert float(cells[2].replace(",", "")) > 0 and float(cells[3].replace(",", "")) > 0
    assert any(line.startswith("Command: `python benchmarks/base_models.py --quick") for line in table)


def test_timed_step_is_the_step_of_fit():
    """The benchmark's per-step and scanned steps are one step of ``autoencoders.fit`` (same batch,
    key and model): same loss and the same parameters after it."""
    bench = _load_benchmark()
    n, key = 16, jax.random.key(3)
    arrays = bench.data("conv_vae", n, seed=1)
    model = autoencoders.create("conv_vae", seed=0)
    config = autoencoders.default_config(model, batch_size=n, max_epochs=1, patience=None)
    history = autoencoders.fit(model, arrays["images"], key=key, config=config, progress=False)

    # fit draws epoch 0's permutation and step keys from fold_in(key, 0).
    per_step, scanned, state, (data, order, keys), _ = bench.fpn_trainer(
        "conv_vae", arrays, n, 1, seed=0, key=jax.random.fold_in(key, 0)
    )
    stepped, loss = per_step(state, data, order[0], keys[0])
    scanned_state, scanned_loss = scanned(state, data, order, keys)
    assert history.train_loss[0] == pytest.approx(float(loss), rel=1e-6)
    assert float(scanned_loss[0]) == pytest.approx(float(loss), rel=1e-5)
    trained = nnx.state(model, nnx.Param)
    start = jax.tree.leaves(state.params)
    for ours, fitted, first in zip(jax.tree.leaves(stepped.params), jax.tree.leaves(trained), start, strict=True):
        assert not np.allclose(ours, first)  # the step moved every parameter
        np.testing.assert_allclose(ours, fitted, atol=1e-6, rtol=0)  # (bitwise equal in practice: the same program)
    # The scan is another XLA program: equal up to rounding, except for the biases followed by batch
    # norm, whose gradient is zero but for rounding noise, which Adam's first step turns into ±lr.
    for (path, ours), fitted, first in zip(
        jax.tree.leaves_with_path(scanned_state.params), jax.tree.leaves(trained), start, strict=True
    ):
        where = jax.tree_util.keystr(path)
        if any(f"'{layer}']['bias']" in where for layer in BIASES_BEFORE_BATCH_NORM):
            assert np.abs(np.asarray(ours) - np.asarray(first)).max() <= 1.01 * config.learning_rate
        else:
            np.testing.assert_allclose(ours, fitted, atol=1e-5, rtol=0, err_msg=where)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("name", ["conv_vae", "conv_ae", "msp"])
def test_torch_loss_and_gradient_are_fpn_jax(name):
    """Same weights, batch and noise: the torch side's loss and every gradient equal fpn-jax's
    (training mode, batch statistics). The torch gradients are mapped into fpn-jax's layout by
    the weight converter itself."""
    import torch

    from fpn_jax.convert.autoencoders import autoencoder_from_state_dict
    from fpn_jax.convert.msp import msp_from_state_dict

    bench = _load_benchmark()
    convert = msp_from_state_dict if name == "msp" else autoencoder_from_state_dict
    reference = bench.torch_model(name, seed=0)
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        if name == "msp":
            from torch_msp import perturbed
        else:
            from torch_autoencoders import perturbed
    finally:
        sys.path.remove(str(ROOT / "tests"))
    reference = perturbed(reference, seed=5).train()
    state = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    ours = convert(dict(state))
    ours.train()

    n, key = 8, jax.random.key(7)
    arrays = bench.data(name, n, seed=2)
    batch = bench.fpn_arrays(name, arrays)
    loss_fn = bench.fpn_setup(name, ours, n)[0]
    # jitted (eager op-by-op differentiation of the convolutions is several times slower to run)
    loss, grads = nnx.jit(lambda m, b: nnx.value_and_grad(lambda m: loss_fn(m, b, key))(m))(ours, batch)

    eps = torch.from_numpy(np.array(jax.random.normal(key, (n, ours.latent_features))))
    tensors = [torch.from_numpy(np.ascontiguousarray(arrays["images"].transpose(0, 3, 1, 2)))]
    if name == "msp":
        tensors.append(torch.from_numpy(arrays["labels"]))
    reference.zero_grad()
    torch_value = bench.torch_loss(name, reference, tensors, eps)
    torch_value.backward()
    assert float(loss) == pytest.approx(torch_value.item(), rel=1e-5)

    torch_grads = dict(state)  # batch-norm buffers as they were; parameters replaced by their gradients
    torch_grads.update({k: p.grad.numpy() for k, p in reference.named_parameters()})
    as_ours = nnx.state(convert(torch_grads), nnx.Param)
    ours_leaves = jax.tree.leaves_with_path(grads)
    torch_leaves = jax.tree.leaves(as_ours)
    assert len(ours_leaves) == len(torch_leaves) == len(list(reference.parameters()))
    # Relative to each leaf's largest entry, and to the largest of all for the leaves whose gradient is
    # zero up to rounding (biases followed by batch norm).
    scale = max(np.abs(np.asarray(t)).max() for t in torch_leaves)
    for (path, g), t in zip(ours_leaves, torch_leaves, strict=True):
        g, t = np.asarray(g), np.asarray(t)
        atol = 2e-4 * np.abs(t).max() + 1e-6 * scale
        np.testing.assert_allclose(g, t, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


def test_torch_is_optional(monkeypatch):
    bench = _load_benchmark()
    monkeypatch.setattr(bench, "torch_available", lambda: False)
    args = bench.parse(["--quick"])
    assert not args.torch and args.torch_note == "torch is not installed"
    assert (args.batch_size, args.steps, args.repeats) == (64, 2, 2)
    result = {
        "torch": False, "torch_note": args.torch_note, "rows": [], "command": "c", "threads": 2, "steps": 2,
        "repeats": 2, "seconds": 1.0, "loadavg_min": 0.0, "loadavg_max": 0.0,
        "machine": {"cpu": "x", "cores": 2, "platform": "p"},
    }
    text = bench.markdown(result)
    assert "torch img/s" not in text and "torch column skipped: torch is not installed" in text
