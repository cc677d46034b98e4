"""Data parallelism (fpn_jax.parallel): 4 forced host devices compute what 1 device does.

The comparisons run in a subprocess (``tests/multi_device.py``) started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``, the only way to get several devices
on a CPU. Inference splits rows and must agree to float32 rounding. Training splits each
batch and XLA reduces the gradient across devices, in another order than one device
does; without batch norm the parameters agree to 1e-6. With batch norm, the shift before
a batch norm leaves the training loss unchanged (a flat direction of the loss), so its
gradient is pure rounding noise, and Adam, which divides by the gradient's magnitude, turns
that noise into full steps of size ``lr``: such coordinates may differ by up to
``2 · lr · steps`` while the training losses stay equal (the validation loss, in eval mode,
sees that direction through the running mean and may differ by 1e-4 relative). That is what is asserted for those cases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from fpn_jax import parallel

HERE = Path(__file__).parent
LR, STEPS_FLOW, STEPS_AE = 1e-3, 2 * 4, 2 * 2  # multi_device.py: 2 epochs of 512/128 and 64/32 rows


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(HERE / "multi_device.py")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


FLOW_CASES = ["maf", "maf_bn", "rnvp_bn"]


def test_the_subprocess_really_has_four_devices(report):
    assert report["device_count"] == 4


@pytest.mark.parametrize("case", FLOW_CASES + ["autoencoder"])
def test_training_on_four_devices_matches_one(report, case):
    r = report[case]
    assert r["devices"] == [1, 4]  # the trained parameters really lived on 1 and on 4 devices
    assert r["train_loss"] <= 1e-5 * r["loss_scale"] + 1e-6, r
    if case == "maf":
        assert r["params_max"] <= 1e-6 and r["val_loss"] <= 1e-5 * r["loss_scale"], r
    else:  # batch norm: see the module docstring; eval mode sees the flat direction through the running mean
        steps = STEPS_AE if case == "autoencoder" else STEPS_FLOW
        assert r["params_max"] <= 2 * LR * steps and r["val_loss"] <= 1e-3 * r["loss_scale"], r


@pytest.mark.parametrize("case", FLOW_CASES)
def test_sampling_and_classification_on_four_devices_match_one(report, case):
    r = report[case]
    assert r["inference_devices"] == [1, 4]
    for name in ("samples", "log_prob", "log_posterior", "noise"):
        assert r[name] <= 1e-5, (name, r)
    assert r["predictions"] == 0  # the same classes


def test_encoding_and_decoding_on_four_devices_match_one(report):
    r = report["autoencoder"]
    for name in ("mean", "sampled", "decoded"):
        assert r[name] <= 1e-5, (name, r)


def test_a_batch_that_does_not_split_evenly_is_refused(report):
    message = report["errors"]["batch_size"]
    assert "`batch_size` = 30 must be a multiple of the 4 devices" in message and "28 or 32" in message


def test_use_devices_checks_its_argument():
    with pytest.raises(ValueError, match="between 1 and"):
        with parallel.use_devices(len(jax.devices()) + 1):
            pass
    with pytest.raises(ValueError, match="non-empty list"):
        with parallel.use_devices([]):
            pass
    with parallel.use_devices(1) as chosen:
        assert parallel.devices() == chosen == (jax.devices()[0],)
        assert parallel.mesh().axis_names == ("data",)
    assert parallel.devices() == tuple(jax.devices())
