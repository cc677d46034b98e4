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


def test_quick_run_writes_json_and_table(tmp_path):
    vs = importlib.util.find_spec("nflows") is not None and importlib.util.find_spec("torch") is not None
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)] + (["--vs-nflows"] if vs else [])
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((tmp_path / "flows-quick.json").read_text())
    assert result["quick"] and result["vs_nflows"] == vs
    assert _positive_finite(result["matmul_ceiling_gflops"])
    assert _positive_finite(result["threads"])
    rows = result["rows"]
    expected = {(f, m) for f in ("C-MAF", "C-RealNVP") for m in ("train", "log_prob", "sample", "classify")}
    assert {(r["flow"], r["metric"]) for r in rows} == expected
    for row in rows:
        assert row["examples"] > 0 and len(row["loadavg_1min"]) == result["repeats"] >= 5
        libraries = ["fpn-jax"] + (["nflows"] if vs else [])
        for library in libraries:
            side = row[library]
            for name in ("examples_per_s", "seconds_per_call", "gflops_per_s", "flops_per_example"):
                assert _positive_finite(side[name]), (row["flow"], row["metric"], library, name, side[name])
            assert len(side["warm_up_calls_s"]) == (3 if library == "fpn-jax" else 1)
            assert all(_positive_finite(s) for s in side["warm_up_calls_s"])
            assert len(side["seconds_all_repeats"]) == result["repeats"]
            assert all(_positive_finite(s) for s in side["seconds_all_repeats"])
            # the rate is the median repeat's
            assert side["examples_per_s"] == pytest.approx(row["examples"] / np.median(side["seconds_all_repeats"]))
        assert math.isfinite(row["fpn-jax"]["compile_s"]) and row["fpn-jax"]["compile_s"] >= 0
        if vs:
            ratio = row["fpn-jax"]["examples_per_s"] / row["nflows"]["examples_per_s"]
            assert row["ratio"] == pytest.approx(ratio)

    table = (tmp_path / "flows-quick.md").read_text().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:5] == ["config", "flow", "metric", "N", "fpn-jax ex/s"]
    assert ("ratio" in header) == vs
    body = [line for line in table[2:] if line.startswith("|")]
    assert len(body) == len(rows)
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header)
        assert float(cells[4].replace(",", "")) > 0
    assert any(line.startswith("Command: `python benchmarks/flows.py --quick") for line in table)


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
