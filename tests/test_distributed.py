"""Training on several processes (JAX's multi-controller runtime) computes what one process does.

``tests/distributed_worker.py`` runs as 2 (and 4) local processes, one CPU device each,
connected by ``jax.distributed`` through a coordinator on ``127.0.0.1`` (gloo collectives),
and once alone as the reference. Each process passes only its own share of the training
rows; the processes' devices form one mesh, so each batch is split over the processes and
XLA all-reduces the gradient across them, in another order than one device sums. The
processes train 2 epochs, write a checkpoint, and resume from it for a third; their
parameters (a C-MAF without batch norm) then agree with the one-process run of 3 epochs to
float32 rounding (asserted 1e-5; measured 2e-7) and are identical in every process. The
checkpoint is one folder, written once. Inference on the global mesh gives every process the
whole result; on a process's own devices (``distributed.local_devices()``) its own rows.

Multi-process: the module starts 3 Python processes (the reference and 2 connected ones) at
once. The 4-process run starts 4 more; it runs when FPN_JAX_TEST_FOUR_PROCESSES=1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
WORKER = HERE / "distributed_worker.py"
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, processes: int, cache: Path) -> list[subprocess.Popen]:
    """Starts the worker as ``processes`` connected processes (0: the one-process reference), writing to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path,
        # One program compiled once for all runs of the session (each fit compiles the same epoch).
        JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    for name in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)  # one CPU device per process, and the reference alone
    if processes:
        env |= {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": str(processes)}
    ids = [{"JAX_PROCESS_ID": str(i)} for i in range(processes)] or [{}]
    return [
        subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env | i, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for i in ids
    ]


def collect(out: Path, running: list[subprocess.Popen]) -> list[dict]:
    """Waits for the processes and reads their reports: ``[{"report": ..., "arrays": ...}]`` by process."""
    logs = []
    try:
        for p in running:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(running, logs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    return [
        {"report": json.loads((out / f"process_{i}.json").read_text()),
         "arrays": dict(np.load(out / f"process_{i}.npz"))}
        for i in range(len(running))
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process reference and the 2-process run, started together."""
    root, cache = tmp_path_factory.mktemp("distributed"), tmp_path_factory.mktemp("compilation_cache")
    reference = launch(root / "one", 0, cache)
    two = launch(root / "two", 2, cache)
    return {"root": root, "cache": cache, "one": collect(root / "one", reference)[0],
            "two": collect(root / "two", two)}


def max_diff(a: dict, b: dict, prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and keys == [k for k in b if k.startswith(prefix)]
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


def check_agreement(one: dict, several: list[dict], processes: int) -> None:
    for i, run in enumerate(several):
        r = run["report"]
        assert (r["index"], r["count"], r["multi"], r["devices"], r["local_devices"]) == (i, processes, True,
                                                                                          processes, 1)
        assert r["param_devices"] == processes  # the parameters really live on every process's device
    assert sum(run["report"]["rows"] for run in several) == one["report"]["rows"]  # each passed its share only
    first, ref = several[0]["arrays"], one["arrays"]
    for run in several[1:]:  # every process holds the same parameters, histories and results
        for k, v in run["arrays"].items():
            if not k.startswith("local_"):
                np.testing.assert_array_equal(v, first[k], err_msg=k)
    # The same as one process, up to float32 summation order; for the multi-process run, after
    # 2 epochs, a checkpoint and a resumed third (a resume that lost the optimiser state or the
    # random stream would be off by about the learning rate, 3e-3).
    assert max_diff(first, ref, "params/") <= 1e-5
    np.testing.assert_allclose(first["train_loss"], ref["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(first["val_loss"], ref["val_loss"], rtol=1e-5)
    for name in ("log_prob", "log_posterior", "best_log_prob"):
        np.testing.assert_allclose(first[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(first["predictions"], ref["predictions"])
    # Per-process inference on the process's own devices: the rows it passed.
    local = np.concatenate([run["arrays"]["local_log_prob"] for run in several])
    np.testing.assert_allclose(local, ref["local_log_prob"], rtol=1e-5, atol=1e-5)


def test_two_processes_train_what_one_process_trains_and_resume(runs):
    check_agreement(runs["one"], runs["two"], 2)


def test_the_checkpoints_are_written_once(runs):
    folder = runs["root"] / "two" / "run"
    entries = sorted(p.name for p in folder.iterdir())
    assert entries == ["best", "resume"], entries  # no leftover temporary folders
    steps = sorted(p.name for p in (folder / "resume").iterdir())
    assert steps == ["2"], steps  # the last epoch only, one folder
    assert not [p for p in folder.rglob("*") if "tmp" in p.name], "temporary files left behind"


def test_different_inputs_on_the_global_mesh_are_refused(runs):
    assert runs["one"]["report"]["different_inputs"] is None
    for run in runs["two"]:
        assert "differs between processes" in run["report"]["different_inputs"]


def test_process_slice_splits_rows_like_array_split():
    from fpn_jax.runtime import distributed

    for n, count in [(10, 3), (2, 4), (250, 2), (0, 2)]:
        parts = [np.arange(n)[distributed.process_slice(n, i, count)] for i in range(count)]
        for got, want in zip(parts, np.array_split(np.arange(n), count), strict=True):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="index"):
        distributed.process_slice(10, 3, 3)


def test_initialize_is_a_no_op_for_one_process(monkeypatch):
    from fpn_jax.runtime import distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False  # nothing configured, no cluster detected
    assert distributed.initialize(num_processes=1) is False
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    assert distributed.initialize() is False
    assert not distributed.is_multiprocess()


@pytest.mark.skipif(os.environ.get("FPN_JAX_TEST_FOUR_PROCESSES") != "1",
                    reason="4 more processes (about 80 s on 2 busy cores): FPN_JAX_TEST_FOUR_PROCESSES=1 runs it")
def test_four_processes_train_what_one_process_trains(runs):
    out = runs["root"] / "four"
    several = collect(out, launch(out, 4, runs["cache"]))
    check_agreement(runs["one"], several, 4)
