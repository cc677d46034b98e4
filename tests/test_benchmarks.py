"""The flow benchmark (``benchmarks/flows.py``): its quick mode runs and writes well-formed
results, and the jitted functions it times compile once when only batch contents change."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fpn_jax import inference
from fpn_jax.flows import ConditionalMAF, ConditionalRealNVP
from fpn_jax.flows.flow import ConditionalFlow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "flows.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_flows", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


PEER_MODULES = {"nflows": ("torch", "nflows"), "zuko": ("torch", "zuko"), "flowjax": ("flowjax", "equinox", "paramax")}
INSTALLED_PEERS = [p for p, modules in PEER_MODULES.items() if _installed(*modules)]
JAX_LIBRARIES = ("fpn-jax", "flowjax")


def _leading_number(cell: str) -> float:
    return float(cell.split()[0].replace(",", "").rstrip("x"))


def test_quick_run_writes_json_and_table(tmp_path):
    peers = INSTALLED_PEERS  # every peer that is installed (none in CI without the `peers` extra)
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)] + (
        ["--vs", ",".join(peers)] if peers else []
    )
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((tmp_path / "flows-quick.json").read_text())
    assert result["quick"] and result["peers"] == peers
    assert _positive_finite(result["matmul_ceiling_gflops"])
    assert _positive_finite(result["threads"])
    assert {"torch", "nflows", "zuko", "flowjax", "equinox", "jax"} <= set(result["versions"])
    assert set(result["architectures"]) == {"fpn-jax", *peers}
    for library, kinds in result["architectures"].items():
        assert set(kinds) == {"C-MAF", "C-RealNVP"}
        assert all(isinstance(text, str) and len(text) > 100 for text in kinds.values()), library
    rows = result["rows"]
    expected = {(f, m) for f in ("C-MAF", "C-RealNVP") for m in ("train", "log_prob", "sample", "classify")}
    assert {(r["flow"], r["metric"]) for r in rows} == expected
    for row in rows:
        assert row["examples"] > 0 and len(row["loadavg_1min"]) == result["repeats"] >= 5
        for library in ["fpn-jax", *peers]:
            side = row[library]
            for name in ("examples_per_s", "seconds_per_call", "gflops_per_s", "flops_per_example"):
                assert _positive_finite(side[name]), (row["flow"], row["metric"], library, name, side[name])
            assert len(side["warm_up_calls_s"]) == (3 if library in JAX_LIBRARIES else 2)
            assert all(_positive_finite(s) for s in side["warm_up_calls_s"])
            assert len(side["seconds_all_repeats"]) == result["repeats"]
            assert all(_positive_finite(s) for s in side["seconds_all_repeats"])
            # the rate is the median repeat's
            assert side["examples_per_s"] == pytest.approx(row["examples"] / np.median(side["seconds_all_repeats"]))
            if library in JAX_LIBRARIES:
                assert math.isfinite(side["compile_s"]) and side["compile_s"] >= 0
            else:
                assert side["compile_s"] is None  # torch runs eagerly
        for peer in peers:
            ratio = row["fpn-jax"]["examples_per_s"] / row[peer]["examples_per_s"]
            assert _positive_finite(row[f"ratio_vs_{peer}"])
            assert row[f"ratio_vs_{peer}"] == pytest.approx(ratio)
        assert not any(key.startswith("ratio_vs_") and key[9:] not in peers for key in row)

    table = (tmp_path / "flows-quick.md").read_text().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:5] == ["config", "flow", "metric", "N", "fpn-jax ex/s"]
    assert [h for h in header if h.startswith("ratio vs ")] == [f"ratio vs {p}" for p in peers]
    body = [line for line in table[2:] if line.startswith("|")]
    assert len(body) == len(rows)
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header)
        assert float(cells[4].replace(",", "")) > 0
        for peer in peers:
            assert _leading_number(cells[header.index(f"{peer} ex/s (% ceil.)")]) > 0
            assert _leading_number(cells[header.index(f"ratio vs {peer}")]) > 0
    assert any(line.startswith("Command: `python benchmarks/flows.py --quick") for line in table)


def test_peer_options():
    bench = _load_benchmark()
    assert bench.parse([]).peers == []
    assert bench.parse(["--vs-nflows"]).peers == ["nflows"]
    assert bench.parse(["--vs", "flowjax,nflows"]).peers == ["nflows", "flowjax"]
    assert bench.parse(["--vs", "zuko", "--vs-nflows"]).peers == ["nflows", "zuko"]
    with pytest.raises(SystemExit):
        bench.parse(["--vs", "nflows,pyro"])


def test_precision_option_sets_jax_matmul_precision():
    bench = _load_benchmark()
    assert bench.parse([]).precision == "default"
    with pytest.raises(SystemExit):
        bench.parse(["--precision", "bf16"])
    before = jax.config.jax_default_matmul_precision
    try:
        bench.set_precision("default", torch_too=False)
        assert jax.config.jax_default_matmul_precision == before
        bench.set_precision("tf32", torch_too=False)
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"
        bench.set_precision("float32", torch_too=False)
        assert jax.config.jax_default_matmul_precision == "float32"
    finally:
        jax.config.update("jax_default_matmul_precision", before)
    assert bench.torch_device(jax.devices("cpu")[0]) == "cpu"


def test_flop_counts():
    """fpn-jax's C-RealNVP computes the halves as nflows does (even D), and the peers' MAF
    sampling costs D density passes."""
    bench = _load_benchmark()
    for config in bench.CONFIGS.values():
        assert bench.pass_flops(config, "rnvp", "fpn-jax") == bench.pass_flops(config, "rnvp", "nflows")
        assert bench.pass_flops(config, "maf", "fpn-jax") == bench.pass_flops(config, "maf", "nflows")
        d, c, h = config.features, config.conditioner_context, config.hidden
        per_layer = (d // 2 + c) * h + config.blocks * (2 * h * h + c * h) + h * 2 * (d // 2)  # D even
        embedding = config.context * config.embedding if config.embedding else 0
        assert bench.pass_flops(config, "rnvp", "nflows") == 2 * (embedding + config.layers * per_layer)
        for peer in ("nflows", "zuko", "flowjax"):
            assert bench.flops_per_example(config, "maf", "sample", peer) == d * bench.pass_flops(config, "maf", peer)
            one_pass = bench.pass_flops(config, "maf", peer)
            assert bench.flops_per_example(config, "maf", "classify", peer) == config.context * one_pass


# A small odd-sized config: odd D tells the libraries' ways of halving apart.
TINY = dict(name="tiny", features=7, context=3, hidden=8, batch_norm=False, sizes={})
# CelebA's shape in small: a linear context embedding, multi-hot contexts, other depths.
TINY_EMBEDDED = dict(TINY, name="tiny-embedded", layers=3, blocks=1, embedding=5, multi_hot=True)


def _dense_shapes(library, flow):
    """Per flow layer, the sorted (in, out) of every weight matrix, and the number of parameters."""
    if library in ("nflows", "zuko"):  # torch: (out, in) weights, named "<...>.transforms.<layer>.<...>"
        layers, embedding = {}, []
        for name, p in flow.named_parameters():
            if name.startswith("_embedding_net") and name.endswith("weight"):  # nflows' context embedding
                embedding.append(tuple(p.shape)[::-1])
            elif name.endswith("weight"):
                layers.setdefault(int(name.split(".")[2]), []).append(tuple(p.shape)[::-1])
        shapes = [embedding] * bool(embedding) + [sorted(v) for _, v in sorted(layers.items())]
        return shapes, sum(p.numel() for p in flow.parameters())
    if library == "flowjax":  # the layers stacked: (L, out, in)
        import equinox as eqx

        leaves = jax.tree.leaves(eqx.filter(flow, eqx.is_inexact_array))
        weights = [leaf.shape[:0:-1] for leaf in leaves if leaf.ndim == 3]
    else:  # fpn-jax: stacked (L, in, out), and the embedding's (C, E) apart
        leaves = jax.tree.leaves(nnx.state(flow.transform, nnx.Param))
        weights = [leaf.shape[1:] for leaf in leaves if leaf.ndim == 3]
        if flow.embedding is not None:
            embedding = jax.tree.leaves(nnx.state(flow.embedding, nnx.Param))
            layers = {leaf.shape[0] for leaf in leaves}
            assert len(layers) == 1
            return (
                [[leaf.shape for leaf in embedding if leaf.ndim == 2]] + [sorted(weights)] * layers.pop(),
                sum(leaf.size for leaf in leaves + embedding),
            )
    layers = {leaf.shape[0] for leaf in leaves}
    assert len(layers) == 1
    return [sorted(weights)] * layers.pop(), sum(leaf.size for leaf in leaves)


@pytest.mark.parametrize("tiny", [TINY, TINY_EMBEDDED], ids=["tiny", "embedded"])
@pytest.mark.parametrize("kind", ["maf", "rnvp"])
@pytest.mark.parametrize("library", ["fpn-jax", "nflows", "zuko", "flowjax"])
def test_built_flows_have_the_counted_dense_layers(library, kind, tiny):
    """Every library's flow has exactly the weight matrices that ``dense_layers`` (the FLOP
    count and the architecture strings) claims, layer by layer, and nothing else but biases;
    also with CelebA's shape (embedding, other depths: fpn-jax and nflows, the only peer it runs)."""
    if library != "fpn-jax" and library not in INSTALLED_PEERS:
        pytest.skip(f"{library} is not installed (pip install -e .[peers])")
    if tiny is TINY_EMBEDDED and library in ("zuko", "flowjax"):
        pytest.skip("the CelebA configurations run against nflows only")
    bench = _load_benchmark()
    config = bench.Config(**tiny)
    flow = bench.build_fpn(config, kind) if library == "fpn-jax" else getattr(bench, f"build_{library}")(config, kind)
    claimed = bench.dense_layers(config, kind, library)
    shapes, parameters = _dense_shapes(library, flow)
    assert shapes == [sorted(layer) for layer in claimed]
    assert parameters == sum((i + 1) * o for layer in claimed for i, o in layer)  # weights and biases only
    assert bench.pass_flops(config, kind, library) == 2 * sum(i * o for layer in claimed for i, o in layer)


@pytest.mark.parametrize("kind", ["maf", "rnvp"])
@pytest.mark.parametrize("library", ["nflows", "zuko", "flowjax"])
def test_peer_operations_compute(library, kind):
    """The timed peer operations on a tiny batch: a finite loss that changes, finite
    log-densities, one finite sample per context row, and a class per latent."""
    if library not in INSTALLED_PEERS:
        pytest.skip(f"{library} is not installed (pip install -e .[peers])")
    bench = _load_benchmark()
    config = bench.Config(**TINY)
    n, device = 9, jax.devices("cpu")[0]

    def numpy(out):
        return np.asarray(out.detach() if hasattr(out, "detach") else out)

    def run(metric):
        return numpy(bench.peer_operation(library, config, kind, metric, n, device)())

    train = bench.peer_operation(library, config, kind, "train", n, device)
    losses = [float(numpy(train())) for _ in range(2)]
    assert all(map(math.isfinite, losses)) and losses[0] != losses[1]
    log_prob = run("log_prob")
    assert log_prob.shape == (n,) and np.isfinite(log_prob).all()
    sample = run("sample")
    assert sample.reshape(n, -1).shape == (n, config.features) and np.isfinite(sample).all()
    labels = run("classify")
    assert labels.shape == (n,) and ((0 <= labels) & (labels < config.context)).all()


@pytest.fixture
def trace_counter(monkeypatch):
    """Counts how often the flow's density is traced (a Python side effect runs at trace time only)."""
    count = {"n": 0}
    original = ConditionalFlow._log_prob

    def counted(self, z, context, key):
        count["n"] += 1
        return original(self, z, context, key)

    monkeypatch.setattr(ConditionalFlow, "_log_prob", counted)
    return count


def _batches(n, d, c, how_many=3):
    rng = np.random.default_rng(0)
    return [
        (jnp.asarray(rng.standard_normal((n, d), dtype=np.float32)),
         jnp.asarray(np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]))
        for _ in range(how_many)
    ]


@pytest.mark.parametrize("cls", [ConditionalMAF, ConditionalRealNVP], ids=["maf", "rnvp"])
def test_train_step_traces_once(cls, trace_counter):
    bench = _load_benchmark()
    flow = cls(
        5, 3, hidden_features=11, num_layers=2, batch_norm_within=True, batch_norm_between=True, rngs=nnx.Rngs(0)
    )
    step, state = bench.make_train_step(flow)
    losses = []
    for z, c in _batches(29, 5, 3):
        state, loss = step(state, z, c, jax.random.key(0))
        losses.append(float(loss))
    assert trace_counter["n"] == 1 and step._cache_size() == 1
    assert len(set(losses)) == 3 and all(map(math.isfinite, losses))  # the contents did change


@pytest.mark.parametrize("cls", [ConditionalMAF, ConditionalRealNVP], ids=["maf", "rnvp"])
def test_log_prob_and_classification_trace_once(cls, trace_counter):
    flow = cls(6, 4, hidden_features=13, num_layers=2, rngs=nnx.Rngs(0))
    values = [flow.log_prob(z, c) for z, c in _batches(37, 6, 4)]
    assert trace_counter["n"] == 1
    assert not np.allclose(values[0], values[1])
    before = inference._log_likelihoods_jit()._cache_size()
    for z, _ in _batches(37, 6, 4):
        inference.classify(flow, z, batch_size=37)
    assert inference._log_likelihoods_jit()._cache_size() == before + 1
