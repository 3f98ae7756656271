"""What a person reads: factor plots, and per-prompt rankings of training examples."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; pods and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from kronfluence.factor.covariance import covariance_matrices_save_path  # noqa: E402
from kronfluence.factor.eigen import eigendecomposition_save_path, lambda_matrices_save_path  # noqa: E402
from kronfluence.utils.constants import (  # noqa: E402
    ACTIVATION_COVARIANCE_MATRIX_NAME,
    ACTIVATION_EIGENVALUES_NAME,
    GRADIENT_COVARIANCE_MATRIX_NAME,
    GRADIENT_EIGENVALUES_NAME,
    HEURISTIC_DAMPING_SCALE,
    LAMBDA_MATRIX_NAME,
    NUM_ACTIVATION_COVARIANCE_PROCESSED,
    NUM_GRADIENT_COVARIANCE_PROCESSED,
    NUM_LAMBDA_PROCESSED,
)
from matplotlib.colors import LogNorm  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from influence_core.artifacts import FactorsReport, Report  # noqa: E402
from influence_core.prompts import Prompt  # noqa: E402

RECALL_AT = 10


# ---- factors ----------------------------------------------------------------------------------

# Kronfluence's factor files: their paths by kind, and the counts it divides each sum by (it
# stores covariances as sums over tokens and the EK-FAC lambda matrix as a sum over examples).
FACTOR_FILES = {
    ACTIVATION_COVARIANCE_MATRIX_NAME: (covariance_matrices_save_path, NUM_ACTIVATION_COVARIANCE_PROCESSED),
    GRADIENT_COVARIANCE_MATRIX_NAME: (covariance_matrices_save_path, NUM_GRADIENT_COVARIANCE_PROCESSED),
    ACTIVATION_EIGENVALUES_NAME: (eigendecomposition_save_path, None),
    GRADIENT_EIGENVALUES_NAME: (eigendecomposition_save_path, None),
    LAMBDA_MATRIX_NAME: (lambda_matrices_save_path, NUM_LAMBDA_PROCESSED),
}
TOP_EIGENVALUES = 10
SPECTRUM_DEFINITIONS = {
    "top_eigenvalues": f"the {TOP_EIGENVALUES} largest eigenvalues",
    "condition_number": "largest / smallest eigenvalue; null when the smallest is not positive (rounding "
                        "makes tiny eigenvalues slightly negative)",
    "effective_rank": "exp of the Shannon entropy of the eigenvalues normalised to sum to 1 (Roy & Vetterli, "
                      "2007): how many equal eigenvalues would spread the same mass",
    "lambda": "the eigenvalues of the module's Fisher approximation that the scores invert: EK-FAC's corrected "
              "eigenvalues, K-FAC's products of gradient and activation eigenvalues, or the diagonal Fisher",
    "heuristic_damping": "what Kronfluence adds when the damping is None (DAMPING_FACTOR=heuristic): 0.1 x the "
                         "mean of lambda",
    "damping": "the damping the scores add: DAMPING_FACTOR, or the heuristic damping when it is 'heuristic'",
    "damped_condition_number": "(largest lambda + damping) / (smallest lambda, at least 0, + damping): the "
                               "conditioning of what the scores invert",
}


def load_factor(factors_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """One kind of factor by module, divided by Kronfluence's count where it stores a sum; empty
    when the strategy has no such factor."""
    save_path, count_name = FACTOR_FILES[name]
    path = save_path(factors_dir, name)
    if not path.exists():
        return {}
    factors = {module: value.double() for module, value in load_file(str(path)).items()}
    count_path = save_path(factors_dir, count_name) if count_name else None
    if count_path is not None and count_path.exists():
        counts = load_file(str(count_path))
        factors = {module: value / counts[module].double().clamp(min=1) for module, value in factors.items()}
    return factors


def spectrum_statistics(values: torch.Tensor) -> dict:
    """Top eigenvalues, condition number and effective rank of a spectrum (any shape, flattened)."""
    ordered = torch.sort(values.double().flatten(), descending=True).values
    positive = ordered.clamp(min=0)
    smallest, largest = float(ordered[-1]), float(ordered[0])
    mass = positive / positive.sum() if positive.sum() > 0 else positive
    entropy = -(mass[mass > 0] * mass[mass > 0].log()).sum()
    return {
        "count": ordered.numel(),
        "top_eigenvalues": ordered[:TOP_EIGENVALUES].tolist(),
        "smallest_eigenvalue": smallest,
        "condition_number": largest / smallest if smallest > 0 else None,
        "effective_rank": float(entropy.exp()) if positive.sum() > 0 else 0.0,
    }


def factor_summary(factors_dir: Path, strategy: str | None, damping_factor: float | str) -> dict:
    """summary.json: spectrum statistics of every tracked module's factors, conditioned with the
    damping the scores add (DAMPING_FACTOR)."""
    activation = load_factor(factors_dir, ACTIVATION_EIGENVALUES_NAME)
    gradient = load_factor(factors_dir, GRADIENT_EIGENVALUES_NAME)
    lambdas = load_factor(factors_dir, LAMBDA_MATRIX_NAME)
    modules = {}
    for module in sorted({*activation, *gradient, *lambdas}, key=_module_order):
        entry = {}
        if module in activation:
            entry["activation_covariance"] = spectrum_statistics(activation[module])
        if module in gradient:
            entry["gradient_covariance"] = spectrum_statistics(gradient[module])
        spectrum = lambdas.get(module)
        if spectrum is None and module in activation and module in gradient:
            spectrum = torch.outer(gradient[module], activation[module])  # K-FAC's, as Kronfluence forms them
        if spectrum is not None:
            heuristic = HEURISTIC_DAMPING_SCALE * float(spectrum.mean())
            damping = heuristic if damping_factor == "heuristic" else float(damping_factor)
            entry["lambda"] = spectrum_statistics(spectrum)
            entry["heuristic_damping"] = heuristic
            entry["damping"] = damping
            entry["damped_condition_number"] = ((float(spectrum.max()) + damping) /
                                                (max(float(spectrum.min()), 0.0) + damping)) if damping > 0 else None
        modules[module.removeprefix("transformer.")] = entry
    return {"strategy": strategy, "damping_factor": damping_factor, "definitions": SPECTRUM_DEFINITIONS,
            "modules": modules}


def _module_order(module: str) -> tuple:
    """transformer.h.10.mlp.c_fc after h.9: numeric parts compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in module.split("."))


def plot_factors(factors_dir: Path, modules: list[str], out_dir: Path, strategy: str | None = None) -> list[Path]:
    """For each of `modules` (the tracked modules of one block): heatmaps of its lambda matrix and
    covariance matrices (log colour scale) and its sorted eigenvalue spectra (log scale)."""
    # The diagonal strategy's lambda is the diagonal Fisher itself, indexed by parameter.
    rows, columns = (("output dimension", "input dimension") if strategy == "diagonal" else
                     ("gradient eigenvector index (ascending eigenvalue)",
                      "activation eigenvector index (ascending eigenvalue)"))
    out_dir.mkdir(parents=True, exist_ok=True)
    lambdas = load_factor(factors_dir, LAMBDA_MATRIX_NAME)
    covariances = {"activation": load_factor(factors_dir, ACTIVATION_COVARIANCE_MATRIX_NAME),
                   "gradient": load_factor(factors_dir, GRADIENT_COVARIANCE_MATRIX_NAME)}
    eigenvalues = {"activation": load_factor(factors_dir, ACTIVATION_EIGENVALUES_NAME),
                   "gradient": load_factor(factors_dir, GRADIENT_EIGENVALUES_NAME)}
    written = []
    for module in modules:
        short = module.removeprefix("transformer.")
        if module in lambdas:
            fig, ax = plt.subplots(figsize=(7, 5))
            _heatmap(fig, ax, lambdas[module], "lambda (log scale)")
            ax.set_title(f"Lambda matrix (Fisher eigenvalues): {short}")
            ax.set_xlabel(columns)
            ax.set_ylabel(rows)
            written.append(save_figure(fig, out_dir / FactorsReport.plot("lambda_matrix", short)))
        present = [kind for kind in ("activation", "gradient") if module in covariances[kind]]
        if present:
            fig, axes = plt.subplots(1, len(present), figsize=(6.5 * len(present), 5), squeeze=False)
            for ax, kind in zip(axes.flat, present):
                _heatmap(fig, ax, covariances[kind][module], "|covariance| (log scale)")
                ax.set_title(f"{kind.capitalize()} covariance: {short}")
                ax.set_xlabel(f"{'input' if kind == 'activation' else 'output'} dimension"
                              f"{' (last: bias)' if kind == 'activation' else ''}")
                ax.set_ylabel(f"{'input' if kind == 'activation' else 'output'} dimension")
            written.append(save_figure(fig, out_dir / FactorsReport.plot("covariance", short)))
        if any(module in source for source in (*eigenvalues.values(), lambdas)):
            written.append(_plot_spectra(module, short, eigenvalues, lambdas, out_dir))
    return written


def _heatmap(fig: plt.Figure, ax: plt.Axes, matrix: torch.Tensor, label: str) -> None:
    values = matrix.abs().float().numpy()
    positive = values[values > 0]
    floor = max(float(positive.min()) if positive.size else 1e-12, float(values.max()) * 1e-8, 1e-30)
    values = np.clip(values, floor, None)
    image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest",
                      norm=LogNorm(vmin=values.min(), vmax=max(values.max(), floor * 10)))
    fig.colorbar(image, ax=ax, label=label)


def _plot_spectra(module: str, short: str, eigenvalues: dict, lambdas: dict, out_dir: Path) -> Path:
    panels = [kind for kind in ("kfac", "lambda") if
              (kind == "kfac" and any(module in source for source in eigenvalues.values()))
              or (kind == "lambda" and module in lambdas)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        if panel == "kfac":
            for kind, source in eigenvalues.items():
                if module in source:
                    ordered = np.sort(source[module].clamp(min=1e-30).numpy())[::-1]
                    ax.plot(np.arange(1, len(ordered) + 1), ordered, label=f"{kind} covariance")
            ax.set_title(f"Covariance eigenvalues (sorted): {short}")
            ax.legend()
        else:
            ordered = np.sort(lambdas[module].flatten().clamp(min=1e-30).numpy())[::-1]
            ax.plot(np.arange(1, len(ordered) + 1), ordered, color="tab:green", label="lambda")
            ax.axhline(HEURISTIC_DAMPING_SCALE * float(lambdas[module].mean()), color="grey", linestyle="--",
                       label="heuristic damping (0.1 x mean)")
            ax.set_title(f"Lambda values (sorted): {short}")
            ax.legend()
        ax.set_yscale("log")
        ax.set_xlabel("rank")
        ax.set_ylabel("eigenvalue (log scale)")
        ax.grid(True, which="major", alpha=0.3)
    return save_figure(fig, out_dir / FactorsReport.plot("eigenvalues", short))


def save_figure(fig: plt.Figure, path: Path, tight_layout: bool = True) -> Path:
    if tight_layout:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- scores ----------------------------------------------------------------------------------

def _ranked(row: torch.Tensor, indices: list[int], texts: list[str]) -> list[dict]:
    return [{"index": index, "score": float(row[index]), "text": texts[index]} for index in indices]


def _extreme(row: torch.Tensor, allowed: torch.Tensor, count: int, highest: bool) -> list[int]:
    """The `count` highest (or lowest) entries of `row` among the `allowed` ones, in that order."""
    candidates = allowed.nonzero().flatten()
    return candidates[torch.argsort(row[candidates], descending=highest, stable=True)[:count]].tolist()


def build_report(scores: torch.Tensor, prompts: list[Prompt], texts: list[str], facts: list[dict] | None,
                 num_influential: int, names: dict, influence: torch.Tensor | None = None) -> dict:
    """report.json: per prompt, the top positive (helpful) and top negative (harmful) training
    examples of the ranking `scores`: the highest of it whose influence is positive, the lowest
    whose influence is negative. `influence` is the influence itself where the ranking is fused
    with other evidence (SCORE_FUSION): a document BM25 ranks high is not helpful unless its
    influence says so. None: the ranking is the influence.

    For prompts that ask for a planted demo fact, recall@10 is the share of the documents stating
    the fact that rank among the 10 highest scores."""
    planted = {(fact["prompt"], fact["completion"]): fact["documents"] for fact in facts or []}
    fused, influence = influence is not None, scores if influence is None else influence
    entries, recalls = [], []
    for row, effect, prompt in zip(scores.float(), influence.float(), prompts):
        order = torch.argsort(row, descending=True).tolist()
        positive = _extreme(row, (row > 0) & (effect > 0), num_influential, highest=True)
        negative = _extreme(row, (row < 0) & (effect < 0), num_influential, highest=False)
        entry = {
            "prompt": prompt.prompt,
            "completion": prompt.completion,
            "top_positive": _ranked(row, positive, texts),
            "top_negative": _ranked(row, negative, texts),
        }
        documents = planted.get((prompt.prompt, prompt.completion))
        if documents:
            top = set(order[:RECALL_AT])
            entry["planted_documents"] = documents
            entry[f"recall_at_{RECALL_AT}"] = sum(d in top for d in documents) / len(documents)
            entry["planted_ranks"] = [order.index(d) + 1 for d in documents]
            recalls.append(entry[f"recall_at_{RECALL_AT}"])
        entries.append(entry)
    report = {**names, "fused": fused, "prompts": entries}
    if recalls:
        report[f"fact_recall_at_{RECALL_AT}"] = sum(recalls) / len(recalls)
    return report


def attach_rescored(report: dict, exact: list[int], rerank_top_k: int) -> None:
    """Scores a query made from the gradient index: mark each listed example's score as exact
    (scored again, RERANK_TOP_K) or the index's estimate."""
    exact_set = set(exact)
    report["rescored"] = {"rerank_top_k": rerank_top_k, "exact_examples": len(exact_set)}
    for entry in report["prompts"]:
        for item in entry["top_positive"] + entry["top_negative"]:
            item["exact"] = item["index"] in exact_set


def _source(item: dict) -> str:
    """How a listed score was made, when it may be the index's estimate."""
    return {True: " (exact)", False: " (index estimate)"}.get(item.get("exact"), "")


def _excerpt(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


# How to read the scores, in (topic, explanation) pairs: the markdown and HTML reports both show them.
READING_SCORES = (
    ("Sign", "a positive score means the training example helps the model produce the completion (a training "
             "step on it lowers the completion's loss); a negative score means it works against it."),
    ("Scale", "a score is the query gradient times the inverse (damped) Fisher approximation times the example's "
              "gradient: compare scores within one prompt and one run. Longer or less likely completions get "
              "larger scores, more damping smaller ones. With EK-FAC factors, a score divided by the number of "
              "training examples roughly estimates how much the completion's loss (in nats) would rise if that "
              "example were left out of training."),
    ("Tokens", "a token's score belongs to its position, where the model reads that token and predicts the next "
               "one, so the influence on a fact often shows on the token just before it. An example's token "
               "scores sum to its influence (with an ensemble, both are the mean over its models)."),
)
SELF_INFLUENCE_NOTE = (
    "Self-influence is an example's influence on its own training loss: the examples the model had to bend "
    "furthest to fit. High values mark outliers, rare facts, garbled or memorised text; such examples have "
    "large gradients and tend to get large scores, of either sign, for every prompt."
)


def attach_token_scores(report: dict, token_scores: list[dict[int, list[float]]],
                        pieces: dict[int, list[str]]) -> None:
    """Add each shown example's tokens and per-token scores (`tokens`, `token_scores`) to report.json."""
    for entry, scores in zip(report["prompts"], token_scores):
        for item in entry["top_positive"] + entry["top_negative"]:
            if item["index"] in scores:
                item["tokens"] = pieces[item["index"]]
                item["token_scores"] = scores[item["index"]]


def attach_self_influence(report: dict, self_scores: torch.Tensor, texts: list[str], count: int,
                          factors_name: str) -> None:
    """Add the `count` training examples with the largest self-influence, largest first, to report.json."""
    order = torch.argsort(self_scores.float(), descending=True)[:count].tolist()
    top = [{"index": index, "score": float(self_scores[index]), "text": texts[index]} for index in order]
    report["self_influence"] = {"factors_name": factors_name, "num_examples": len(self_scores), "top": top}


NEAR_CERTAIN = 0.9  # the model already gives the completion at least this probability
NEAR_CERTAIN_NOTE = (
    "The model already gives this completion a probability of {probability:.3f}. The gradients the scores are "
    "made of shrink with 1 - probability, so scores for a completion the model is sure of are weak evidence: "
    "they predict less of what retraining does (see the LDS per prompt), and the lists below may point the "
    "wrong way."
)


def attach_probabilities(report: dict, probabilities: list[float]) -> None:
    """Add the model's probability of each prompt's completion, and whether it is near-certain."""
    for entry, probability in zip(report["prompts"], probabilities):
        entry["probability"] = probability
        entry["near_certain"] = probability >= NEAR_CERTAIN


EVIDENCE_AT = 10  # the top documents of influence and BM25 compared per prompt
DISAGREE_NOTE = (
    "None of the {k} documents with the highest influence are among the {k} BM25 ranks highest for prompt + "
    "completion: what the model learned the completion from is not where its words are (or the influence is "
    "noise: see the probability above)."
)


def attach_evidence(report: dict, ranking: str, influence: torch.Tensor, lexical: torch.Tensor) -> None:
    """Add what made the ranking (`ranking`, in words) and, per prompt, how many of the top
    EVIDENCE_AT documents by influence are also BM25's (`evidence_overlap`; 0: the two disagree; None:
    no document shares a word with prompt + completion).
    Each listed example gets its influence and BM25 score beside the ranking's."""
    from influence_core.fusion import top_overlap

    report["ranking"] = ranking
    for entry, overlap, influence_row, lexical_row in zip(report["prompts"], top_overlap(
            influence, lexical, EVIDENCE_AT), influence.double(), lexical.double()):
        entry["evidence_overlap"] = overlap
        for item in entry["top_positive"] + entry["top_negative"]:
            item["influence"], item["bm25"] = float(influence_row[item["index"]]), float(lexical_row[item["index"]])


def evidence_line(entry: dict) -> str:
    """One sentence: how far influence and BM25 agree on the prompt's top documents."""
    if entry["evidence_overlap"] is None:
        return "No training document shares a word with prompt + completion: there is no lexical evidence."
    return (f"Influence and BM25 share {entry['evidence_overlap']} of their top {EVIDENCE_AT} documents"
            + (f". {DISAGREE_NOTE.format(k=EVIDENCE_AT)}" if entry["evidence_overlap"] == 0 else "."))


ENSEMBLE_NOTE = (
    "These scores are one model's influence. Averaged over {models} models trained with other seeds, the "
    "influence predicted retraining better on all three corpora measured (docs/results/lds_corpora.md): "
    "ENSEMBLE_SEEDS={models} python -m jobs ensemble trains them once, then compute_scores with "
    "ENSEMBLE_SEEDS={models} averages them for any prompts."
)


def suggest_ensemble(report: dict) -> None:
    """Add the suggestion to average the influence over an ensemble (for one model trained here)."""
    from influence_core.settings import ENSEMBLE_SUGGESTED

    report["suggestion"] = ENSEMBLE_NOTE.format(models=ENSEMBLE_SUGGESTED)


def attach_lds(report: dict, result: dict, scores_name: str) -> None:
    """Add what the LDS stage measured for these scores (reports/lds/lds.json): their LDS and the
    baselines' to report.json, and each prompt's correlation to its entry."""
    methods = result["methods"]
    mine = methods[scores_name]
    report["lds"] = {
        "lds": mine["lds"], "stderr": mine["stderr"], "subsets": result["subsets"], "seeds": result["seeds"],
        "fraction": result["fraction"],
        "baselines": {name: {key: method[key] for key in ("label", "lds", "stderr")}
                      for name, method in methods.items() if method["baseline"]},
    }
    measured = {(p["prompt"], p["completion"]): number for number, p in enumerate(result["prompts"])}
    for entry in report["prompts"]:
        number = measured.get((entry["prompt"], entry["completion"]))
        if number is not None:
            entry["lds"] = mine["per_prompt"][number]


def lds_summary(lds: dict) -> str:
    """One sentence: the scores' LDS beside the baselines'."""
    baselines = ", ".join(f"{b['label']} {b['lds']:.2f}" for b in lds["baselines"].values())
    return (f"LDS {lds['lds']:.2f} ± {lds['stderr']:.2f}: how well the scores predict the model retrained on "
            f"{lds['subsets']} random subsets of {lds['fraction']:.0%} of its training data, {lds['seeds']} training "
            f"seed(s) each (Spearman correlation, mean over prompts; 1 is perfect, 0 is chance). Baselines: "
            f"{baselines}.")


def top_tokens(item: dict, count: int = 3) -> list[tuple[str, float]]:
    """The tokens of an example that carry the largest share of its score (same sign as the score)."""
    if "token_scores" not in item:
        return []
    sign = 1.0 if item["score"] >= 0 else -1.0
    order = sorted(range(len(item["tokens"])), key=lambda i: -sign * item["token_scores"][i])[:count]
    return [(item["tokens"][i], item["token_scores"][i]) for i in order if sign * item["token_scores"][i] > 0]


def render_markdown(report: dict, excerpt_chars: int) -> str:
    lines = [
        f"# Influence report: {report['scores_name']}",
        "",
        f"Factors: `{report['factors_name']}` (strategy {report['strategy']}).",
        *([f"Ranking: {report['ranking']}."] if "ranking" in report else []),
        "",
        *[f"- **{topic}**: {text}" for topic, text in READING_SCORES],
        "",
    ]
    if f"fact_recall_at_{RECALL_AT}" in report:
        lines += [f"**Planted-fact recall@{RECALL_AT}: {report[f'fact_recall_at_{RECALL_AT}']:.3f}** "
                  "(share of the documents stating each demo fact found among its prompt's top "
                  f"{RECALL_AT}, averaged over the fact prompts).", ""]
    if "lds" in report:
        lines += [f"**{lds_summary(report['lds'])}**", ""]
    if "suggestion" in report:
        lines += [f"Tip: {report['suggestion']}", ""]
    if "rescored" in report:
        lines += [f"Scores from the gradient index; each prompt's top {report['rescored']['rerank_top_k']} "
                  f"candidates ({report['rescored']['exact_examples']} examples in all) scored again exactly, "
                  "and marked so.", ""]
    for number, entry in enumerate(report["prompts"], start=1):
        lines += [f"## {number}. {entry['prompt']} → {entry['completion'].strip()}", ""]
        if "probability" in entry:
            line = f"The model's probability of the completion: {entry['probability']:.3f}."
            if "lds" in entry:
                line += f" LDS of this prompt: {entry['lds']:+.2f}."
            lines += [line, ""]
            if entry["near_certain"]:
                lines += [f"> **Warning: near-certain completion.** {NEAR_CERTAIN_NOTE.format(**entry)}", ""]
        if "evidence_overlap" in entry:
            lines += [evidence_line(entry), ""]
        if f"recall_at_{RECALL_AT}" in entry:
            lines += [f"Recall@{RECALL_AT} {entry[f'recall_at_{RECALL_AT}']:.2f}: planted documents "
                      f"{entry['planted_documents']} rank {entry['planted_ranks']}.", ""]
        lines += [f"![Score distribution of prompt {number}]({Report.distribution_plot(number)})", ""]
        for title, key in (("Top positive (helpful)", "top_positive"), ("Top negative (harmful)", "top_negative")):
            lines += [f"### {title}", ""]
            if not entry[key]:
                lines += ["(none)", ""]
            for item in entry[key]:
                excerpt = _excerpt(item["text"], excerpt_chars)
                influence = f" (influence {item['influence']:.4g})" if report.get("fused") else ""
                lines.append(f"- **#{item['index']}** score {item['score']:.4g}{influence}{_source(item)}: {excerpt}")
                if tokens := top_tokens(item):
                    shown = ", ".join(f"`{piece.strip() or repr(piece)}` {score:+.3g}" for piece, score in tokens)
                    lines.append(f"  - most influential tokens: {shown}")
            lines.append("")
    if "self_influence" in report:
        self_influence = report["self_influence"]
        lines += ["## Most self-influential training examples", "",
                  f"{SELF_INFLUENCE_NOTE} Top {len(self_influence['top'])} of {self_influence['num_examples']} "
                  f"(factors `{self_influence['factors_name']}`).", ""]
        for item in self_influence["top"]:
            lines.append(f"- **#{item['index']}** self-influence {item['score']:.4g}: "
                         f"{_excerpt(item['text'], excerpt_chars)}")
        lines.append("")
    return "\n".join(lines)


def plot_score_distributions(scores: torch.Tensor, prompts: list[Prompt], path: Path,
                             label: str = "influence score") -> Path:
    """One histogram of scores over all training examples per prompt."""
    count = len(prompts)
    columns = min(4, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, row, prompt in zip(axes.flat, scores.float(), prompts):
        ax.hist(row.numpy(), bins=50, color="tab:blue")
        ax.set_yscale("log")
        title = f"{prompt.prompt} →{prompt.completion}"
        ax.set_title(title if len(title) < 45 else title[:44] + "…", fontsize=8)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("training examples", fontsize=8)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    return save_figure(fig, path)


def plot_prompt_distribution(row: torch.Tensor, entry: dict, number: int, path: Path,
                             label: str = "influence score") -> Path:
    """Histogram of one prompt's scores over all training examples, with the listed top examples
    (and the planted documents of a demo fact) marked."""
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.hist(row.float().numpy(), bins=60, color="#9db4cf")
    ax.set_yscale("log")
    for key, color in (("top_positive", "tab:green"), ("top_negative", "tab:red")):
        for item in entry[key]:
            ax.axvline(item["score"], color=color, linewidth=1, alpha=0.8)
    for document in entry.get("planted_documents", []):
        ax.plot(float(row[document]), 1, marker="v", color="black", markersize=6, linestyle="none")
    title = f"{number}. {entry['prompt']} →{entry['completion']}"
    ax.set_title(title if len(title) < 70 else title[:69] + "…", fontsize=9)
    ax.set_xlabel(f"{label} (green: top positive, red: top negative"
                  + (", ▼ planted documents)" if entry.get("planted_documents") else ")"), fontsize=8)
    ax.set_ylabel("training examples (log)", fontsize=8)
    fig.subplots_adjust(left=0.11, right=0.98, top=0.9, bottom=0.17)  # fixed: tight_layout would double the cost
    return save_figure(fig, path, tight_layout=False)
