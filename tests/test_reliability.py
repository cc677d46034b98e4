"""Reliability of training: interrupted runs, crashed saves, and non-finite losses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fpn_jax import ConditionalRealNVP, TrainConfig, checkpoint, fit, one_hot

HERE = Path(__file__).parent
SCRIPT = HERE / "interrupted_training.py"


def _command(kind: str, directory: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, str(SCRIPT), kind, str(directory), str(out), str(epochs)]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))


def _saved_epochs(directory: Path) -> list[int]:
    resume = directory / "resume"
    return sorted(int(p.name) for p in resume.iterdir() if p.name.isdigit()) if resume.is_dir() else []


# Flows and base models share the loop (fpn_jax.train.fit_model); the ConvVAE variant takes ~40 s more
# and runs with FPN_JAX_SLOW_TESTS=1 (the base model's resume is also tested in-process in
# tests/test_autoencoders.py).
@pytest.mark.parametrize("kind, epochs, kill_after", [
    ("flow", 12, 3),
    pytest.param("autoencoder", 6, 2, marks=pytest.mark.skipif(
        not os.environ.get("FPN_JAX_SLOW_TESTS"), reason="slow; set FPN_JAX_SLOW_TESTS=1")),
])
def test_a_run_killed_with_sigkill_resumes_to_the_same_parameters(tmp_path, kind, epochs, kill_after):
    # The uninterrupted reference.
    subprocess.run(_command(kind, tmp_path / "straight", tmp_path / "straight.npz", epochs), env=_env(),
                   check=True, timeout=600, capture_output=True)

    # The same run, killed without warning once it has checkpointed `kill_after` epochs.
    directory = tmp_path / "killed"
    process = subprocess.Popen(_command(kind, directory, tmp_path / "killed.npz", epochs), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (_saved_epochs(directory) and _saved_epochs(directory)[-1] >= kill_after - 1):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed.npz").exists()
    interrupted_at = _saved_epochs(directory)[-1]
    assert interrupted_at < epochs - 1  # it really stopped part-way

    # Started again, it resumes from the last checkpoint and ends where the reference ended.
    subprocess.run(_command(kind, directory, tmp_path / "killed.npz", epochs), env=_env(),
                   check=True, timeout=600, capture_output=True)
    straight, resumed = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "killed.npz")
    assert len(straight.files) == len(resumed.files) > 0
    for name in straight.files:
        np.testing.assert_allclose(resumed[name], straight[name], rtol=1e-5, atol=1e-6, err_msg=name)


def _flow(seed: int = 0) -> ConditionalRealNVP:
    return ConditionalRealNVP(2, 3, hidden_features=8, num_layers=2, rngs=nnx.Rngs(seed))


def _toy(n: int = 256):
    kz, ky = jax.random.split(jax.random.key(0))
    y = jax.random.randint(ky, (n,), 0, 3)
    return jax.random.normal(kz, (n, 2)), one_hot(y, 3)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model"
    old, new = _flow(0), _flow(1)
    checkpoint.save(path, old)

    # The new state is written to a temporary folder first: a crash there leaves `path` alone.
    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.ocp.Checkpointer, "save", crash)
        with pytest.raises(OSError, match="simulated"):
            checkpoint.save(path, new, overwrite=True)
    _assert_same(checkpoint.load(path), old)

    # A crash between moving the old folder aside and moving the new one in: the next load
    # finds the old folder and puts it back.
    real_replace, calls = os.replace, []

    def replace_then_crash(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("power cut (simulated)")
        real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.os, "replace", replace_then_crash)
        with pytest.raises(OSError, match="simulated"):
            checkpoint.save(path, new, overwrite=True)
    assert not path.exists()
    _assert_same(checkpoint.load(path), old)
    assert path.is_dir()

    checkpoint.save(path, new, overwrite=True)  # and saving works again afterwards
    _assert_same(checkpoint.load(path), new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _assert_same(a: nnx.Module, b: nnx.Module) -> None:
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_crash_while_checkpointing_an_epoch_resumes_from_the_one_before(tmp_path, monkeypatch):
    from fpn_jax.train import loop

    z, c = _toy()
    config = TrainConfig(batch_size=64, max_epochs=4, patience=None)
    real_save = loop.Store.save

    def crash(self, epoch, trees, history):
        if epoch == 2:
            raise OSError("disk full (simulated)")
        return real_save(self, epoch, trees, history)

    with monkeypatch.context() as patch:
        patch.setattr(loop.Store, "save", crash)
        with pytest.raises(OSError, match="simulated"):
            fit(_flow(), z, c, key=jax.random.key(1), config=config, progress=False, checkpoint_dir=tmp_path)
    assert _saved_epochs(tmp_path) == [1]  # epochs 1 and 2 (0-based 0, 1); only the latest is kept

    resumed, straight = _flow(), _flow()
    history = fit(resumed, z, c, key=jax.random.key(1), config=config, progress=False, checkpoint_dir=tmp_path)
    fit(straight, z, c, key=jax.random.key(1), config=config, progress=False)
    assert len(history.train_loss) == 4
    for x, y in zip(jax.tree.leaves(nnx.state(resumed)), jax.tree.leaves(nnx.state(straight)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def _poisoned(n: int = 256, bad_rows: tuple[int, ...] = (3,)):
    """Finite data whose log-density overflows float32 in ``bad_rows`` (|z| = 1e30)."""
    z, c = _toy(n)
    return z.at[jnp.asarray(bad_rows), 0].set(1e30), c


def test_a_nonfinite_loss_stops_the_run_by_default(tmp_path):
    z, c = _poisoned()
    flow, initial = _flow(), nnx.state(_flow())
    with pytest.raises(FloatingPointError, match=r"NaN or infinite in step \d+ of 4 of epoch 1.*nonfinite='skip'"):
        fit(flow, z, c, key=jax.random.key(1), config=TrainConfig(batch_size=64, max_epochs=3), progress=False,
            checkpoint_dir=tmp_path)
    _assert_same(flow, nnx.merge(nnx.graphdef(flow), initial))  # nothing of the bad epoch was kept
    assert _saved_epochs(tmp_path) == []


def test_nonfinite_steps_can_be_skipped():
    z, c = _poisoned()
    flow = _flow()
    config = TrainConfig(learning_rate=1e-2, batch_size=64, max_epochs=5, patience=None, nonfinite="skip")
    history = fit(flow, z, c, key=jax.random.key(1), config=config, progress=False)
    assert history.skipped_steps == [1] * 5  # the one batch holding row 3, in every epoch
    assert all(np.isfinite(history.train_loss))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(nnx.state(flow)))
    assert history.train_loss[-1] < history.train_loss[0]  # the other steps trained


def test_skipping_still_stops_when_every_step_is_bad():
    z, c = _poisoned(bad_rows=tuple(range(0, 256, 32)))  # a bad row in every batch of 64
    with pytest.raises(FloatingPointError, match="every step of epoch 1"):
        fit(_flow(), z, c, key=jax.random.key(1), progress=False,
            config=TrainConfig(batch_size=64, max_epochs=3, nonfinite="skip"))


def test_nonfinite_config_is_checked():
    with pytest.raises(ValueError, match="`nonfinite` must be 'stop' or 'skip'"):
        TrainConfig(nonfinite="ignore")
