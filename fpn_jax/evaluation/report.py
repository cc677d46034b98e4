"""``report.md`` of an experiment run (MNIST, ShapeNet): tables next to the paper's numbers, figures inline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fpn_jax.data import IDX_DATASETS

BASE_NAMES = {"conv_vae": "ConvVAE", "conv_ae": "ConvAE"}
PLUGIN_NAMES = {"maf": "C-MAF", "rnvp": "C-RealNVP"}
BASELINE_NAMES = {"logistic_regression": "logistic regression", "linear_svm": "linear SVM", "rbf_svm": "RBF SVM"}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_table(metrics: dict[str, Any]) -> str:
    """Test accuracy by Bayes' rule for every base × plugin, beside the paper's number."""
    rows = []
    for base, plugins in metrics["results"].items():
        for plugin, r in plugins.items():
            rows.append([BASE_NAMES[base], PLUGIN_NAMES[plugin], r["test_accuracy"], r["test_accuracy_prior"],
                         r["train_accuracy"], metrics["paper"].get(plugin, "–"), r["generation_accuracy"],
                         r["test_nll"]])
    return _table(["base", "plugin", "test acc. (uniform prior)", "test acc. (class prior)", "train acc.",
                   "paper test acc.", "generation acc. (judge)", "test NLL (nats)"], rows)


def write_mnist_report(out: Path, metrics: dict[str, Any]) -> Path:
    """Writes ``out/report.md`` from the metrics of ``fpn_jax.experiments.mnist.train_and_evaluate``."""
    config = metrics["config"]
    title = IDX_DATASETS[config.get("dataset", "mnist")].title
    sections = [
        f"# Flow Plugin Networks on {title}",
        f"Run folder `{out}`; data: {metrics['data']['train']} train / {metrics['data']['validation']} validation "
        f"/ {metrics['data']['test']} test images{' (quick subset)' if config.get('subset') else ''}; "
        f"seed {config['seed']}; "
        f"JAX {metrics['environment']['jax']} on {metrics['environment']['backend']}. "
        "Early stopping and model selection use the validation split only; the test set is evaluated once.",
        "## Classification by Bayes' rule",
        "`argmax_y log p(z | y) + log p(y)` with a uniform prior and with the training set's class frequencies.",
        headline_table(metrics),
    ]
    if metrics["paper"]:
        sections.append(_against_the_paper(metrics))
    baseline_rows = []
    for base, results in metrics["baselines"].items():
        for name, r in results.items():
            paper = metrics["paper"].get(name, "–")
            baseline_rows.append([BASE_NAMES[base], BASELINE_NAMES.get(name, name), r["test_accuracy"],
                                  r["train_accuracy"], paper, _params(r["params"]), r["n_train"]])
    sections += [
        "## Baselines on the same latents",
        "Standardised latents; fixed hyper-parameters unless the run used `--grid-search` "
        f"(this run: {'yes' if config['grid_search'] else 'no'}).",
        _table(
            ["base", "classifier", "test acc.", "train acc.", "paper test acc.", "hyper-parameters", "training rows"],
            baseline_rows,
        ),
        "Training accuracy of the baselines is measured on at most 10,000 of their training rows.",
        "## Conditional generation",
        f"{config['samples_per_class']} samples per class are decoded and classified by an independent CNN "
        f"trained on the {title} training images (its own test accuracy: "
        f"{metrics['judge']['test_accuracy']:.4f}). Generation accuracy = how often it agrees with the class "
        "the sample was drawn for. Samples that overflowed to a non-finite latent count as wrong: "
        + ", ".join(f"{BASE_NAMES[b]} + {PLUGIN_NAMES[p]}: {r.get('non_finite_samples', 0)}"
                    for b, ps in metrics["results"].items() for p, r in ps.items())
        + f" of {metrics['data'].get('num_classes', 10) * config['samples_per_class']}.",
        "![generation accuracy per class](generation_accuracy.png)",
    ]
    for base, plugins in metrics["results"].items():
        for plugin in plugins:
            sections.append(f"**{BASE_NAMES[base]} + {PLUGIN_NAMES[plugin]}** (rows: classes 0–9)\n\n"
                            f"![samples](samples_{base}_{plugin}.png)")
    base_rows = [[BASE_NAMES[base], "cached" if info["cached"] else f"trained in this run ({info['epochs']} epochs)",
                  info["best_epoch"] + 1, info["val_loss"]] for base, info in metrics["base_models"].items()]
    sections += ["## Base models", "Validation loss: summed BCE + KL per image (ConvVAE), MSE per pixel (ConvAE).",
                 _table(["base", "status", "best epoch", "best validation loss"], base_rows)]
    sections += [f"![reconstructions](reconstructions_{base}.png)\n\n![unconditional](unconditional_{base}.png)"
                 for base in metrics["base_models"]]
    sections += [
        "## Latent space",
        "t-SNE of test latents and plugin samples, fitted jointly so the panels share axes.",
    ]
    sections += [f"![embedding](embedding_{base}.png)" for base in metrics["results"]]
    sections += ["## Plugin training", _plugin_training(metrics), "![training curves](training_curves.png)",
                 "## Wall time (seconds)",
                 _table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in metrics["timings"].items()])]
    path = Path(out) / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def _against_the_paper(metrics: dict[str, Any], generation_target: float = 0.95) -> str:
    """Which combinations beat the paper's test accuracy and reach ``generation_target`` generation accuracy."""
    pairs = [(f"{BASE_NAMES[b]} + {PLUGIN_NAMES[p]}", r, metrics["paper"].get(p))
             for b, ps in metrics["results"].items() for p, r in ps.items()]
    above = [name for name, r, paper in pairs if paper is not None and r["test_accuracy"] > paper]
    reach = [name for name, r, _ in pairs if r["generation_accuracy"] >= generation_target]
    return (f"Test accuracy above the paper's (uniform prior): {len(above)} of {len(pairs)}"
            f"{' (' + ', '.join(above) + ')' if above else ''}. Generation accuracy >= {generation_target}: "
            f"{len(reach)} of {len(pairs)}{' (' + ', '.join(reach) + ')' if reach else ''}.")


def _plugin_training(metrics: dict[str, Any]) -> str:
    """How long each plugin trained and why it stopped (early stopping on the validation NLL, or the cap)."""
    rows = []
    for base, plugins in metrics["results"].items():
        for plugin, r in plugins.items():
            patience, cap = r.get("patience"), r.get("max_epochs")
            stopped = ("epoch cap" if r["epochs"] == cap else
                       "early stopping" if patience is not None and r["epochs"] - 1 - r["best_epoch"] >= patience
                       else "other")
            rows.append([BASE_NAMES[base], PLUGIN_NAMES[plugin], r["epochs"], r["best_epoch"] + 1,
                         "none" if patience is None else patience, "–" if cap is None else cap, stopped,
                         f"{r['train_seconds']:.1f}"])
    return ("Adam 1e-3; each plugin keeps the parameters of its best validation epoch.\n\n" + _table(
        ["base", "plugin", "epochs run", "best epoch", "patience", "cap", "stopped by", "seconds"], rows))


def shapenet_table(metrics: dict[str, Any]) -> str:
    """Table 2: test accuracy of the plugins (both priors) and the baselines, beside the paper's."""
    paper = metrics["paper"]
    rows = []
    for name, r in metrics.get("baselines", {}).items():
        rows.append([BASELINE_NAMES.get(name, name), r["test_accuracy"], "–", paper.get(name, "–")])
    for plugin, r in metrics["results"].items():
        rows.append([f"FPN {PLUGIN_NAMES[plugin]}", r["test_accuracy"], r["test_accuracy_prior"],
                     paper.get(plugin, "–")])
    rows.append(["AutoML (paper only)", "–", "–", paper.get("automl", "–")])
    return _table(["classifier", "test acc.", "test acc. (class prior)", "paper test acc."], rows)


def _generation_keys(results: list[dict[str, Any]]) -> list[str]:
    """The metric names present in any result, in PointFlow's order (CD, then EMD, then JSD)."""
    present = {k for r in results for k in r["mean"]}
    order = [f"{m}-{d}" for d in ("CD", "EMD", "EMD-exact") for m in ("MMD", "COV", "1-NNA")] + ["JSD"]
    return [k for k in order if k in present] + sorted(present - set(order))


def write_shapenet_report(out: Path, metrics: dict[str, Any]) -> Path:
    """Writes ``out/report.md`` from the metrics of ``fpn_jax.experiments.shapenet.train_and_evaluate``."""
    config, data = metrics["config"], metrics["data"]
    source = "the generated stand-in (parametric shapes, not ShapeNet)" if data["synthetic"] else "ShapeNet"
    base = metrics["base_model"]
    base_text = (f"converted checkpoint `{base['source']}`" if "source" in base else
                 ("cached" if base["cached"] else f"trained in this run ({base['epochs']} epochs)")
                 + f", best validation NLL {base['val_loss']:.1f} nats per cloud")
    generated = [(f"FPN {PLUGIN_NAMES[p]}", r["generation"]) for p, r in metrics["results"].items()
                 if "generation" in r]
    if "ceiling" in metrics:
        generated.append(("ceiling: encoded training clouds", metrics["ceiling"]))
    keys = _generation_keys([r for _, r in generated])
    sections = [
        f"# Flow Plugin Networks on {source}",
        f"Run folder `{out}`; {data['train']} train / {data['validation']} validation / {data['test']} test clouds "
        f"of {data['points']} points, {data['num_classes']} classes; seed {config['seed']}; JAX "
        f"{metrics['environment']['jax']} on {metrics['environment']['backend']}. Base model: PointFlow, {base_text}. "
        "Early stopping uses the validation split only; the test split is evaluated once.",
        "## Classification (Table 2)",
        "Bayes' rule `argmax_y log p(z | y) + log p(y)` with a uniform prior and with the training split's class "
        "frequencies; the baselines are fitted on the same standardised latents"
        f"{' with a 5-fold grid search' if config['grid_search'] else ' with fixed hyper-parameters'}.",
        shapenet_table(metrics),
        "![per-class accuracy](classification_per_class.png)",
        "## Conditional generation",
        f"Per class, {config['generation_samples']} codes z ~ p(z | y) are decoded to clouds and compared with at "
        f"most {config['generation_references']} test clouds of that class (normalised coordinates) by PointFlow's "
        "metrics: MMD (lower is better), coverage COV (higher), 1-NN accuracy (50% is ideal), JSD of occupancy "
        "grids (lower). Means over classes weighted by their reference counts. The ceiling decodes the codes of "
        "real training clouds of each class: what the decoder makes of real codes, the level plugin samples can "
        "hope to reach.",
        _table(["codes", *keys], [[name, *(r["mean"].get(k, "–") for k in keys)] for name, r in generated]),
    ]
    sections += [f"**{PLUGIN_NAMES[p]}**\n\n![samples](samples_{p}.png)" for p in metrics["results"]]
    sections += [
        "## Base model",
        f"Mean Chamfer distance of {metrics['reconstruction']['clouds']} test clouds to their reconstructions "
        f"D(E(x)): {metrics['reconstruction']['chamfer_mean']:.4f} (normalised coordinates).",
        "![reconstructions](reconstructions.png)",
        "## Latent space", "t-SNE of test latents and plugin samples, fitted jointly.", "![embedding](embedding.png)",
        "## Plugin training", "![training curves](training_curves.png)",
        "## Wall time (seconds)",
        _table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in metrics["timings"].items()]),
    ]
    path = Path(out) / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
