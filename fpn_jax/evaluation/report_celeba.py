"""``report.md`` of a CelebA run (``fpn_jax.experiments.celeba``): tables of the numbers, figures inline.

The paper shows CelebA only as pictures; the report puts the pictures (sample grids,
manipulation grids, FPN's and MSP's edits side by side) next to what the run measured: test
NLL, Bayes-rule attribute prediction against a logistic regression and the majority vote,
and what an independent attribute CNN sees in the edits and samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["celeba_table", "write_celeba_report"]

PLUGIN_NAMES = {"maf": "C-MAF", "rnvp": "C-RealNVP"}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def celeba_table(metrics: dict[str, Any]) -> str:
    """One row per plugin: test NLL, Bayes-rule attribute accuracy, edit success and kept, samples' attributes."""
    rows = []
    for plugin, r in metrics["results"].items():
        edits, generation = r.get("edits", {}).get("mean", {}), r.get("generation", {})
        rows.append([f"FPN {PLUGIN_NAMES[plugin]}", r["test_nll"], r["test_nll_per_dim"],
                     r["bayes"]["uniform"]["accuracy_mean"], r["bayes"]["prior"]["accuracy_mean"],
                     edits.get("success"), edits.get("before"), edits.get("kept"), generation.get("single_on_mean")])
    msp = metrics["msp_edits"]["mean"]
    rows.append(["MSP (linear edit)", None, None, None, None, msp["success"], msp["before"], msp["kept"], None])
    rows.append(["logistic regression on z", None, None, metrics["probe"]["accuracy_mean"], *[None] * 5])
    rows.append(["majority vote", None, None, metrics["majority"]["accuracy_mean"], *[None] * 5])
    return _table(["model", "test NLL (nats)", "NLL per dim", "attribute acc. (Bayes, uniform)",
                   "attribute acc. (Bayes, prior)", "edit success", "target seen before the edit", "others kept",
                   "samples show the attribute"], rows)


def write_celeba_report(out: Path, metrics: dict[str, Any]) -> Path:
    """Writes ``out/report.md`` from the metrics of ``fpn_jax.experiments.celeba.train_and_evaluate``."""
    config, data, base = metrics["config"], metrics["data"], metrics["base_model"]
    source = "the generated stand-in (drawn faces, not CelebA)" if data["synthetic"] else "CelebA"
    if "source" in base:
        base_text = f"converted checkpoint `{base['source']}`"
    else:
        base_text = ("cached" if base["cached"] else f"trained in this run ({base['epochs']} epochs)") + \
            f", best validation loss {base['val_loss']:.1f} per image"
    classifier, attributes = metrics["classifier"], metrics["attributes"]
    plugins = list(metrics["results"])
    sections = [
        f"# Flow Plugin Networks on {source}",
        f"Run folder `{out}`; {data['train']} train / {data['validation']} validation / {data['test']} test images "
        f"at {data['image_size']} px; seed {config['seed']}; JAX {metrics['environment']['jax']} on "
        f"{metrics['environment']['backend']}. Base model: MSP ({base['parameters']:,} parameters, latent "
        f"{base['latent_features']}), {base_text}. Latents: "
        + ("z ~ q(z | x), as the original FPN code" if data["latents"] == "sample" else "the posterior mean μ(x)")
        + ". Early stopping uses the validation split only; the test split is evaluated once.",
        "## Summary",
        celeba_table(metrics),
        "*Attribute acc.*: for each test latent and attribute a, Bayes' rule between y and y with bit a flipped, "
        "`log p(z | y) − log p(z | y ⊕ e_a) > 0` (plus the prior log-odds of a in the *prior* column); the other 39 "
        "attributes are given, which the logistic regression (one per attribute, on the same standardised latents) "
        "does not get. *Edit success*: share of edits after which the attribute CNN sees the flipped attribute at "
        "its new value (*target seen before the edit*: the same share on the unedited reconstruction, what an edit "
        "that changes nothing scores); *others kept*: share of the other 39 attributes whose CNN verdict on the edit "
        "equals its "
        "verdict on the reconstruction D(z) (so the autoencoder's own loss does not count against the edit). "
        "*Samples show the attribute*: share of samples of the 40 one-hot contexts in which the CNN sees that "
        "attribute.",
        "## Attribute classifier (the judge)",
        f"A CNN with 40 sigmoid outputs trained here on {classifier['image_size']} px training images "
        f"({'cached' if classifier['cached'] else str(classifier['epochs']) + ' epochs'}); it never sees the base "
        f"model or the plugins. On {classifier['test_images']} test images its mean accuracy is "
        f"{classifier['test']['accuracy_mean']:.4f}; on their reconstructions D(E(x)) "
        f"{classifier['reconstructions']['accuracy_mean']:.4f} (per-pixel reconstruction MSE "
        f"{classifier['reconstruction_mse']:.4f} in [-1, 1] units). Majority-vote accuracy: "
        f"{metrics['majority']['accuracy_mean']:.4f}.",
        "## Per attribute",
        _table(
            ["attribute", "train rate", "majority", "log. regression"]
            + [f"Bayes {PLUGIN_NAMES[p]}" for p in plugins]
            + [f"edit {PLUGIN_NAMES[p]} (kept)" for p in plugins if "edits" in metrics["results"][p]]
            + ["edit MSP (kept)", "judge on test", "judge on D(E(x))"],
            [[name, data["train_rates"][a], metrics["majority"]["accuracy"][a], metrics["probe"]["accuracy"][a]]
             + [metrics["results"][p]["bayes"]["uniform"]["accuracy"][a] for p in plugins]
             + [_edit_cell(metrics["results"][p]["edits"], a) for p in plugins if "edits" in metrics["results"][p]]
             + [_edit_cell(metrics["msp_edits"], a), classifier["test"]["accuracy"][a],
                classifier["reconstructions"]["accuracy"][a]]
             for a, name in enumerate(attributes)],
        ),
        "![attribute prediction](attribute_prediction.png)",
        "## Attribute manipulation",
        f"Faces {tuple(config['figure_rows'])} of the {config['figure_split']} split (the original script's choice), "
        "one row per flipped attribute: FPN keeps the noise u = T⁻¹(z | y) and decodes T(u | y'); MSP moves the "
        f"attribute's score to ±{config['msp_edit_strength']} along its matrix M (z' = z + d M) from the same z. "
        f"The numbers above score {metrics['msp_edits']['rows']} test faces × 40 flips per method.",
        _table(["FPN " + PLUGIN_NAMES[p] for p in plugins] + ["MSP"],
               [[f"![FPN {PLUGIN_NAMES[p]}](manipulation_{p}.png)" for p in plugins]
                + ["![MSP](manipulation_msp.png)"]]),
        "![edit success](edit_success.png)",
        "![edit kept](edit_kept.png)",
        "## Conditional samples",
        f"u = T ε with ε ~ N(0, I) at temperatures T = {', '.join(f'{t:.2f}' for t in config['temperatures'])}, "
        f"{config['samples_per_temperature']} samples each, z = T(u | y), x = D(z); contexts: the paper's "
        "combinations and the 40 single attributes (one-hot, all others 0, as the original). The overview shows "
        "one sample per temperature (columns) for every context (rows), the same noise in every row; per-context "
        "grids (rows = temperatures) are in `samples_<plugin>/`.",
    ]
    for plugin in plugins:
        generation = metrics["results"][plugin].get("generation")
        if generation is None:
            continue
        combos = [[name, c["on"], c["agreement"], c["samples"]] for name, c in generation["per_context"].items()
                  if "+" in name]
        sections += [f"**{PLUGIN_NAMES[plugin]}** ({generation['non_finite']} non-finite samples)",
                     f"![samples](samples_{plugin}.png)"]
        sections += [f"![{name}]({name})" for name in generation["context_figures"] if "+" in name]
        if combos:
            sections.append(_table(["combination", "attributes present (CNN)", "agreement with all 40", "samples"],
                                   combos))
    sections += [
        "## Plugin training",
        _table(["plugin", "parameters", "epochs", "best epoch", "seconds", "cached"],
               [[PLUGIN_NAMES[p], f"{r['parameters']:,}", r["epochs"], r["best_epoch"], f"{r['train_seconds']:.1f}",
                 r["cached"]]
                for p, r in metrics["results"].items()]),
        "![training curves](training_curves.png)",
        "## Wall time (seconds)",
        _table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in metrics["timings"].items()]),
    ]
    path = Path(out) / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def _edit_cell(edits: dict[str, Any], a: int) -> str:
    return f"{edits['success'][a]:.2f} ({edits['kept'][a]:.2f})"
