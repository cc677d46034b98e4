"""`python experiments/mnist.py --quick` end to end on the shared MNIST files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason=f"no MNIST files in {MNIST}")
def test_quick_run_writes_report_metrics_and_figures(tmp_path):
    # One base model keeps the suite's time down; the ConvVAE path is run by
    # tests/test_notebooks.py (mnist_colab_tpu trains a ConvVAE and a C-MAF on MNIST).
    out = tmp_path / "run"
    # 5 plugin epochs instead of --quick's 15: the pipeline, not the accuracy, is under test here.
    command = [sys.executable, str(ROOT / "experiments" / "mnist.py"), "--quick", "--data-dir", str(MNIST),
               "--plugin-epochs", "5", "--out", str(out), "--base", "conv_ae"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for base in ("conv_ae",):
        for plugin in ("maf", "rnvp"):
            r = metrics["results"][base][plugin]
            for key in ("test_accuracy", "test_accuracy_prior", "train_accuracy", "generation_accuracy"):
                assert 0.0 <= r[key] <= 1.0
            assert r["test_accuracy"] > 0.3  # far above chance (0.1) even after a few epochs on 3000 images
            assert r["test_nll"] == r["test_nll"]  # finite, not NaN
        assert set(metrics["baselines"][base]) == {"logistic_regression", "linear_svm", "rbf_svm"}
    assert "total" in metrics["timings"] and metrics["judge"]["test_accuracy"] > 0.5
    report = (out / "report.md").read_text()
    for figure in ["samples_conv_ae_maf.png", "samples_conv_ae_rnvp.png", "generation_accuracy.png", "embedding_conv_ae.png",
                   "reconstructions_conv_ae.png", "unconditional_conv_ae.png", "training_curves.png"]:
        assert figure in report and (out / figure).stat().st_size > 1000
    assert "0.9677" in report  # the paper's number sits beside ours

    # A second run (one combination) reuses the cached base model and judge: same numbers.
    again = subprocess.run(command[:-3] + [str(tmp_path / "run2"), "--cache-dir", str(out / "cache"),
                                           "--base", "conv_ae", "--plugin", "rnvp"],
                           capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert second["base_models"]["conv_ae"]["cached"] is True
    for key in ("test_accuracy", "test_nll", "generation_accuracy"):
        assert second["results"]["conv_ae"]["rnvp"][key] == pytest.approx(metrics["results"]["conv_ae"]["rnvp"][key], abs=1e-4)


def test_missing_data_says_what_to_do(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "mnist.py"), "--quick", "--data-dir", str(tmp_path / "nothing"),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--data-dir" in run.stderr or "data_dir" in run.stderr
