"""PyTorch → fpn-jax conversion of the MNIST base models: outputs match torch's in eval mode."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from torch_autoencoders import TorchConvAE, TorchConvVAE, perturbed  # noqa: E402

from fpn_jax import autoencoders, checkpoint  # noqa: E402
from fpn_jax.checkpoint import CheckpointError  # noqa: E402
from fpn_jax.convert.autoencoders import autoencoder_from_state_dict, convert_autoencoder  # noqa: E402

TORCH = {"conv_vae": TorchConvVAE, "conv_ae": TorchConvAE}


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("architecture", ["conv_vae", "conv_ae"])
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_encoder_and_decoder_match_torch(architecture, batch):
    reference = perturbed(TORCH[architecture](), seed=batch)
    ours = autoencoder_from_state_dict(_state(reference))
    rng = np.random.default_rng(batch)
    x = rng.uniform(size=(batch, 1, 28, 28)).astype(np.float32)
    z = rng.normal(size=(batch, 40)).astype(np.float32)
    with torch.no_grad():
        z_torch = reference.encode(torch.from_numpy(x)).numpy()
        x_torch = reference.dec(torch.from_numpy(z)).numpy()
    z_ours = np.asarray(ours.encode(x.transpose(0, 2, 3, 1)))
    x_ours = np.asarray(ours.decode(z)).transpose(0, 3, 1, 2)
    assert np.abs(z_torch).mean() > 0.1 and x_torch.std() > 0.01  # non-trivial outputs
    np.testing.assert_allclose(z_ours, z_torch, atol=1e-5, rtol=0)
    np.testing.assert_allclose(x_ours, x_torch, atol=1e-5, rtol=0)


def test_vae_log_variance_head_is_converted():
    reference = perturbed(TorchConvVAE(), seed=3)
    ours = autoencoder_from_state_dict(_state(reference))
    x = np.random.default_rng(0).uniform(size=(4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        logvar = reference.fc_logvar(reference.enc(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(np.asarray(ours.posterior(x.transpose(0, 2, 3, 1))[1]), logvar, atol=1e-5)


@pytest.mark.parametrize("kind", ["pt", "lightning"])
def test_convert_file_round_trip(tmp_path, kind):
    reference = perturbed(TorchConvAE(), seed=1)
    path = tmp_path / ("model.pt" if kind == "pt" else "model.ckpt")
    if kind == "pt":
        torch.save(reference.state_dict(), path)
    else:
        torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in reference.state_dict().items()}}, path)
    out = convert_autoencoder(path, tmp_path / "converted")
    model = autoencoders.load(out)
    assert isinstance(model, autoencoders.ConvAE)
    x = np.random.default_rng(0).uniform(size=(3, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = reference.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model.encode(x.transpose(0, 2, 3, 1))), expected, atol=1e-5)


def test_bad_checkpoints_list_the_offending_keys(tmp_path):
    state = _state(TorchConvVAE())
    del state["fc_logvar.bias"]
    state["enc.disc.0.0.weight"] = np.zeros((32, 1, 4, 4), np.float32)
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as info:
        autoencoder_from_state_dict(state, source="bad.pt")
    message = str(info.value)
    for needle in ["bad.pt", "fc_logvar.bias", "extra.weight", "enc.disc.0.0.weight", "(16, 1, 4, 4)", "(32, 1, 4, 4)"]:
        assert needle in message


def test_vae_weights_as_ae_are_refused():
    with pytest.raises(CheckpointError, match="bottleneck.weight"):
        autoencoder_from_state_dict(_state(TorchConvVAE()), architecture="conv_ae")


def test_corrupt_file_names_the_file_and_writes_nothing(tmp_path):
    path = tmp_path / "broken.pt"
    torch.save(TorchConvAE().state_dict(), path)
    path.write_bytes(path.read_bytes()[: 2000])
    with pytest.raises(CheckpointError, match="broken.pt"):
        convert_autoencoder(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken.pt"]


def test_conversion_cli(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "vae.pth"
    reference = perturbed(TorchConvVAE(), seed=2)
    torch.save(reference.state_dict(), path)
    out = tmp_path / "vae"
    run = subprocess.run(
        [sys.executable, "-m", "fpn_jax.convert", "autoencoder", str(path), str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert checkpoint.read_meta(out)["architecture"] == "conv_vae"
    model = autoencoders.load(out)
    x = np.random.default_rng(1).uniform(size=(2, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = reference.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model.encode(x.transpose(0, 2, 3, 1))), expected, atol=1e-5)
    bad = subprocess.run(
        [sys.executable, "-m", "fpn_jax.convert", "autoencoder", str(tmp_path / "missing.pt"), str(tmp_path / "x")],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode != 0 and "missing.pt" in bad.stderr and "Traceback" not in bad.stderr


def test_run_py_model_pkt_with_its_config(monkeypatch, tmp_path, capsys):
    """The original run.py pickles the whole ConvVAE (model.pkt) with config.yaml one folder up."""
    import yaml
    from original_code import rehome, save_like_run_py
    from torch_autoencoders import Decoder, Encoder

    from fpn_jax.convert.__main__ import main as convert_main

    names = {TorchConvVAE: "models.vae.conv_vae.ConvVAE", Encoder: "models.vae.conv_vae.Encoder",
             Decoder: "models.vae.conv_vae.Decoder"}
    reference = rehome(monkeypatch, perturbed(TorchConvVAE(), seed=4), names)
    config = {"model_params": {"name": "ConvVAE", "type": "vae", "params": {"latent_dim": 40}}}
    path = save_like_run_py(reference, tmp_path / "logs" / "ConvVAE", config)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):  # torch's safe loader refuses it
        torch.load(path, weights_only=True)

    out = convert_autoencoder(path, tmp_path / "vae")
    model = autoencoders.load(out)
    assert isinstance(model, autoencoders.ConvVAE)
    x = np.random.default_rng(0).uniform(size=(3, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = reference.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model.encode(x.transpose(0, 2, 3, 1))), expected, atol=1e-5)

    with pytest.raises(CheckpointError, match=r"is a conv_vae \(it is a pickled ConvVAE\).*architecture='conv_ae'"):
        convert_autoencoder(path, tmp_path / "ae", architecture="conv_ae")
    assert convert_main(["autoencoder", str(path), str(tmp_path / "ae"), "--architecture", "conv_ae"]) == 1
    err = capsys.readouterr().err
    assert "but --architecture conv_ae was given; pass --architecture conv_vae or give none" in err

    (path.parent.parent / "config.yaml").write_text(yaml.safe_dump({**config, "model_params": {
        **config["model_params"], "name": "ConvAE"}}))
    with pytest.raises(CheckpointError, match=r"it is a pickled ConvVAE but .*config.yaml names ConvAE"):
        convert_autoencoder(path, tmp_path / "ae")
