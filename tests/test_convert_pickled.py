"""Conversion of the files users of the original FPN code hold: pickled modules, old Lightning
checkpoints, the original's config.yaml; refusals that say what a file is; the command line.

Every file is built here with torch and nflows under the original code's module paths (see
``original_code``), read without running it, converted, and compared with torch.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nflows")

import original_code as orig  # noqa: E402
from nflows.flows.base import Flow  # noqa: E402

from fpn_jax import checkpoint  # noqa: E402
from fpn_jax.checkpoint import CheckpointError  # noqa: E402
from fpn_jax.convert import pickled  # noqa: E402
from fpn_jax.convert.__main__ import main as convert_main  # noqa: E402
from fpn_jax.convert.nflows import convert_flow, flow_from_nflows  # noqa: E402
from fpn_jax.convert.torch_io import (  # noqa: E402
    ConfigMismatchWarning,
    NotATorchFileError,
    TorchFileError,
    TruncatedFileError,
    UnknownClassError,
    UnsupportedVariantError,
    read_state_dict,
    read_torch_file,
)

README = Path(__file__).resolve().parents[1] / "README.md"
D, C, H = 6, 3, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op torch thread


def original_flow(monkeypatch, kind: str, **kwargs) -> Flow:
    """A perturbed flow pickling as the original's MaskedAutoregressiveFlow / SimpleRealNVP."""
    torch.manual_seed(0)
    flow = orig.perturbed(orig.maf(D, C, H, **kwargs) if kind == "maf" else orig.rnvp(D, C, H, **kwargs))
    return orig.rehome(monkeypatch, flow, {Flow: orig.MAF_CLASS if kind == "maf" else orig.RNVP_CLASS})


def assert_same_density(flow, torch_flow, what: str) -> None:
    z, context = orig.inputs(D, C)
    theirs = orig.torch_log_prob(torch_flow, z, context)
    np.testing.assert_allclose(np.asarray(flow.log_prob(z, context)), theirs, atol=1e-5, rtol=1e-6, err_msg=what)


# --------------------------------------------------------------------------- pickled flows
@pytest.mark.parametrize("kind", ["maf", "rnvp"])
def test_run_py_model_pkt_converts_without_kind(monkeypatch, tmp_path, kind):
    embedding = torch.nn.Linear(C, 4) if kind == "maf" else None
    extra = {"embedding": embedding} if embedding else {"activation": torch.nn.functional.tanh}
    torch_flow = original_flow(monkeypatch, kind, bn=True, dropout=0.1, **extra)
    params = dict(features=D, hidden_features=H, context_features=C, num_layers=2, num_blocks_per_layer=1,
                  batch_norm_within_layers=True, batch_norm_between_layers=True, dropout_probability=0.1)
    if embedding:
        params["embedding_features"] = 4
    path = orig.save_like_run_py(torch_flow, tmp_path / "logs" / kind.upper(),
                                 orig.flow_config("MAF" if kind == "maf" else "RNVP", **params))
    with pytest.raises(pickle.UnpicklingError):  # what torch's safe loader says about such a file
        torch.load(path, weights_only=True)

    file = read_torch_file(path)
    assert file.layout == "module"
    assert file.module.qualified_name == (orig.MAF_CLASS if kind == "maf" else orig.RNVP_CLASS)
    assert file.config_path == path.parent.parent / "config.yaml"
    expected = {k: v.numpy() for k, v in torch_flow.state_dict().items()}
    assert file.state.keys() == expected.keys()
    assert all(np.array_equal(file.state[k], expected[k]) for k in expected)

    out = convert_flow(path, tmp_path / "converted")
    flow = checkpoint.load(out)
    assert flow.config["dropout"] == pytest.approx(0.1)  # from the pickle's Dropout (and config.yaml)
    assert flow.config["activation"] == ("relu" if kind == "maf" else "tanh")  # the pickled function
    assert flow.config["embedding_features"] == (4 if embedding else None)
    assert_same_density(flow, torch_flow, kind)


def test_config_yaml_that_disagrees_warns_and_the_weights_win(monkeypatch, tmp_path):
    torch_flow = original_flow(monkeypatch, "rnvp")
    path = orig.save_like_run_py(torch_flow, tmp_path, orig.flow_config("MAF", features=D, hidden_features=40,
                                                                          context_features=C))
    with pytest.warns(ConfigMismatchWarning, match=r"hidden_features: config.yaml 40, the weights 16") as caught:
        flow = flow_from_nflows(path)
    assert "model_params.name is 'MAF', the weights are an nflows RealNVP" in str(caught[0].message)
    assert_same_density(flow, torch_flow, "rnvp, stale config")


def test_old_lightning_checkpoint_with_class_keyed_callbacks(monkeypatch, tmp_path):
    torch_flow = original_flow(monkeypatch, "rnvp")
    early = orig.register_class(monkeypatch, object, "pytorch_lightning.callbacks.early_stopping.EarlyStopping")
    best = orig.register_class(monkeypatch, object, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
    optimizer = torch.optim.Adam(torch_flow.parameters())
    path = tmp_path / "epoch=41.ckpt"
    torch.save({
        "epoch": 41, "global_step": 420, "pytorch-lightning_version": "1.2.10",
        "callbacks": {
            early: {"wait_count": 3, "stopped_epoch": 0, "best_score": torch.tensor(-3.5), "patience": 50},
            best: {"monitor": "val_loss", "best_model_score": np.float64(-3.4), "best_model_path": "",
                   "dirpath": str(tmp_path)},
        },
        "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [],
        "state_dict": {f"model.{k}": v for k, v in torch_flow.state_dict().items()},
    }, path)
    with pytest.raises(pickle.UnpicklingError, match="EarlyStopping|ModelCheckpoint"):
        torch.load(path, weights_only=True)
    state = read_state_dict(path)
    assert state.keys() == torch_flow.state_dict().keys()
    assert_same_density(flow_from_nflows(path), torch_flow, "lightning")


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
def test_legacy_format(monkeypatch, tmp_path):
    torch_flow = original_flow(monkeypatch, "maf")
    state, module = tmp_path / "state.pt", tmp_path / "model.pkt"
    torch.save(torch_flow.state_dict(), state, _use_new_zipfile_serialization=False)
    torch.save(torch_flow, module, _use_new_zipfile_serialization=False)
    got = read_state_dict(state)
    assert all(np.array_equal(got[k], v.numpy()) for k, v in torch_flow.state_dict().items())
    with pytest.raises(TorchFileError, match=r"whole pickled module in torch's legacy format .* state_dict\(\)"):
        read_state_dict(module)


# --------------------------------------------------------------------------- refusals
class Payload:
    """Unpickling this runs ``function(argument)``: what a malicious checkpoint does."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("how", ["exec", "os.system", "inside a checkpoint"])
def test_malicious_reduce_is_refused_without_running(tmp_path, how):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('ran')"
    payload = Payload(exec, code) if how != "os.system" else Payload(__import__("os").system, f"touch {marker}")
    pickle.loads(pickle.dumps(Payload(exec, code.replace("pwned", "proof"))))  # the payload does work
    assert (tmp_path / "proof").exists()
    path = tmp_path / "model.pkt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": payload} if how == "inside a checkpoint" else payload, path)
    with pytest.raises(UnknownClassError, match="nothing in it was run") as info:
        read_state_dict(path)
    assert info.value.name == ("builtins.exec" if how != "os.system" else f"{payload.function.__module__}.system")
    assert info.value.name in str(info.value) and "model.pkt" in str(info.value)
    assert not marker.exists()


def test_pickled_module_of_an_unknown_class_is_named(monkeypatch, tmp_path):
    model = orig.rehome(monkeypatch, torch.nn.Sequential(torch.nn.Linear(2, 3)),
                        {torch.nn.Sequential: "mylab.nets.Net"})
    path = tmp_path / "net.pt"
    torch.save(model, path)
    with pytest.raises(UnknownClassError, match=r"holds a pickled mylab\.nets\.Net .*state_dict\(\)") as info:
        read_torch_file(path)
    assert info.value.name == "mylab.nets.Net"


@pytest.mark.filterwarnings("ignore:`torch.jit.s:DeprecationWarning")
def test_unreadable_files_say_what_they_are(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(1000)}, good)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(1000)}, legacy, _use_new_zipfile_serialization=False)
    cases = {
        "text.pt": (b"model_params:\n  name: MAF\n", NotATorchFileError, "not a torch file: it is text"),
        "array.pt": (b"\x93NUMPY\x01\x00" + b" " * 40, NotATorchFileError, "NumPy"),
        "empty.pt": (b"", NotATorchFileError, "it is empty"),
        "plain.pkl": (pickle.dumps({"w": [1.0]}), NotATorchFileError, "plain pickle"),
        "cut.pt": (good.read_bytes()[:3000], TruncatedFileError, "truncated: .* zip directory, is missing"),
        "cut_legacy.pt": (legacy.read_bytes()[:40], TruncatedFileError, "truncated or corrupt"),
    }
    for name, (data, error, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(error, match=message):
            read_state_dict(tmp_path / name)
    with pytest.raises(NotATorchFileError, match="is a folder"):
        read_state_dict(tmp_path)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(NotATorchFileError, match="TorchScript"):
        read_state_dict(scripted)


@pytest.mark.parametrize("variant, kwargs, message", [
    ("maf", {"random_permutations": True}, r"nflows MAF with random permutations \(use_random_permutations=True; .*"
                                           r"RandomPermutation\).*not supported"),
    ("rnvp", {"volume_preserving": True}, r"a volume-preserving nflows RealNVP.*not supported"),
    ("maf", {"residual": False}, r"an nflows MAF without residual blocks \(.*use_residual_blocks=False.*"
                                 r"not supported"),
    ("maf", {"residual": False, "random_masks": True}, r"without residual blocks and with random masks"),
])
def test_pickled_unsupported_variants_say_so(monkeypatch, tmp_path, variant, kwargs, message):
    path = tmp_path / "model.pkt"
    torch.save(original_flow(monkeypatch, variant, **kwargs), path)
    with pytest.raises(UnsupportedVariantError, match=message):
        flow_from_nflows(path)


def test_autoencoder_pickle_given_to_the_flow_converter(monkeypatch, tmp_path):
    model = orig.rehome(monkeypatch, torch.nn.Sequential(torch.nn.Linear(2, 3)),
                        {torch.nn.Sequential: "models.vae.conv_vae.ConvVAE"})
    torch.save(model, tmp_path / "model.pkt")
    message = r"pickled models.vae.conv_vae.ConvVAE.*'python -m fpn_jax.convert autoencoder'"
    with pytest.raises(CheckpointError, match=message):
        flow_from_nflows(tmp_path / "model.pkt")


# --------------------------------------------------------------------------- command line
def test_cli_reads_the_kind_checks_it_and_names_options_as_typed(monkeypatch, tmp_path, capsys):
    torch_flow = original_flow(monkeypatch, "maf")
    path = orig.save_like_run_py(torch_flow, tmp_path, orig.flow_config("MAF", features=D, hidden_features=H,
                                                                          context_features=C, num_layers=2,
                                                                          num_blocks_per_layer=1))
    out = tmp_path / "maf"
    assert convert_main(["flow", str(path), str(out)]) == 0, capsys.readouterr().err
    assert_same_density(checkpoint.load(out), torch_flow, "cli")
    assert convert_main(["flow", str(path), str(out)]) == 1
    err = capsys.readouterr().err
    assert "exists; pass --overwrite to replace it" in err and "overwrite=True" not in err
    assert convert_main(["flow", str(path), str(tmp_path / "x"), "--kind", "rnvp"]) == 1
    err = capsys.readouterr().err
    assert "Try --kind maf, or give no kind" in err and "kind=" not in err and "Traceback" not in err
    assert convert_main(["flow", str(path), str(out), "--kind", "maf", "--overwrite"]) == 0
    with pytest.raises(FileExistsError, match=r"pass overwrite=True"):  # Python callers read Python
        convert_flow(path, out)


def _options(text: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z-]+", text)) - {"--help"}


@pytest.mark.parametrize("command", ["autoencoder", "flow", "pointflow", "msp"])
def test_help_matches_the_readme_and_the_docstring(command, capsys):
    with pytest.raises(SystemExit):
        convert_main([command, "--help"])
    usage = capsys.readouterr().out.split("positional arguments")[0]
    section = README.read_text().split("## Base models, checkpoints and PyTorch conversion", 1)[1].split("\n## ")[0]
    synopsis = re.search(r"```bash\n(.*?)```", section, flags=re.S)[1]
    documented = [" ".join(line.split()) for line in re.sub(r"\n\s+\[", " [", synopsis).splitlines()
                  if line.startswith(f"python -m fpn_jax.convert {command} ")]
    assert documented, f"README's conversion section has no synopsis for {command!r}"
    from fpn_jax.convert import __main__ as cli

    docstring = [" ".join(line.split()) for line in re.sub(r"\n\s+\[", " [", cli.__doc__).splitlines()
                 if line.strip().startswith(f"python -m fpn_jax.convert {command} ")]
    for text in (documented[0], docstring[0]):
        assert _options(text) == _options(usage), (text, usage)
        for choices in re.findall(r"\{[a-z_,]+\}", usage):
            assert choices in text, (choices, text)
    assert "--scale-function" not in cli.__doc__ + section


def test_reader_does_not_leave_safe_globals_behind(monkeypatch, tmp_path):
    torch.save(original_flow(monkeypatch, "maf"), tmp_path / "model.pkt")
    before = set(torch.serialization.get_safe_globals())
    read_torch_file(tmp_path / "model.pkt")
    assert set(torch.serialization.get_safe_globals()) == before
    assert not any(isinstance(g, tuple) and issubclass(g[0], pickled.StandIn) for g in before)
