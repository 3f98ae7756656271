"""What a person reads: factor plots, and per-prompt rankings of training examples."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; pods and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from influence_core.modeling import mlp_module_names  # noqa: E402
from influence_core.prompts import Prompt  # noqa: E402

RECALL_AT = 10


# ---- factors ---------------------------------------------------------------------------------

def _load_if_present(factors_dir: Path, name: str) -> dict[str, torch.Tensor]:
    path = factors_dir / f"{name}.safetensors"
    return load_file(str(path)) if path.exists() else {}


def plot_factors(factors_dir: Path, layer: int, out_dir: Path) -> list[Path]:
    """Heatmaps of the lambda matrices and eigenvalue spectra of one block's MLP modules."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lambdas = _load_if_present(factors_dir, "lambda_matrix")
    activation_eigenvalues = _load_if_present(factors_dir, "activation_eigenvalues")
    gradient_eigenvalues = _load_if_present(factors_dir, "gradient_eigenvalues")
    written = []
    for module in mlp_module_names(layer + 1, layers=[layer]):
        short = module.removeprefix("transformer.")
        if module in lambdas:
            values = lambdas[module].float().abs().clamp(min=1e-12).numpy()
            fig, ax = plt.subplots(figsize=(7, 5))
            image = ax.imshow(values, aspect="auto", cmap="viridis", norm=LogNorm(vmin=values.min(), vmax=values.max()))
            fig.colorbar(image, ax=ax, label="|lambda| (log scale)")
            ax.set_title(f"Lambda matrix: {short}")
            ax.set_xlabel("input (activation) eigenbasis index")
            ax.set_ylabel("output (gradient) eigenbasis index")
            written.append(_save(fig, out_dir / f"lambda_matrix_{short}.png"))
        if module in activation_eigenvalues or module in gradient_eigenvalues:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for label, source in (("activation covariance", activation_eigenvalues),
                                  ("gradient covariance", gradient_eigenvalues)):
                if module in source:
                    ordered = np.sort(source[module].double().clamp(min=1e-30).numpy())[::-1]
                    ax.plot(np.arange(1, len(ordered) + 1), ordered, label=label)
            ax.set_yscale("log")
            ax.set_title(f"Eigenvalue spectra: {short}")
            ax.set_xlabel("rank")
            ax.set_ylabel("eigenvalue (log scale)")
            ax.legend()
            written.append(_save(fig, out_dir / f"eigenvalues_{short}.png"))
    return written


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- scores ----------------------------------------------------------------------------------

def _ranked(row: torch.Tensor, indices: list[int], texts: list[str]) -> list[dict]:
    return [{"index": index, "score": float(row[index]), "text": texts[index]} for index in indices]


def build_report(scores: torch.Tensor, prompts: list[Prompt], texts: list[str], facts: list[dict] | None,
                 num_influential: int, names: dict) -> dict:
    """report.json: per prompt, the top positive and top negative training examples by score.

    For prompts that ask for a planted demo fact, recall@10 is the share of the documents stating
    the fact that rank among the 10 highest scores."""
    planted = {(fact["prompt"], fact["completion"]): fact["documents"] for fact in facts or []}
    entries, recalls = [], []
    for row, prompt in zip(scores.float(), prompts):
        order = torch.argsort(row, descending=True).tolist()
        positive = [i for i in order[:num_influential] if row[i] > 0]
        negative = [i for i in reversed(order[-num_influential:]) if row[i] < 0]
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
    report = {**names, "prompts": entries}
    if recalls:
        report[f"fact_recall_at_{RECALL_AT}"] = sum(recalls) / len(recalls)
    return report


def _excerpt(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def render_markdown(report: dict, excerpt_chars: int) -> str:
    lines = [
        f"# Influence report: {report['scores_name']}",
        "",
        f"Factors: `{report['factors_name']}` (strategy {report['strategy']}). "
        "A positive score means the training example helps the model produce the completion "
        "(training on it lowers the completion's loss); a negative score means it works against it.",
        "",
    ]
    if f"fact_recall_at_{RECALL_AT}" in report:
        lines += [f"**Planted-fact recall@{RECALL_AT}: {report[f'fact_recall_at_{RECALL_AT}']:.3f}** "
                  "(share of the documents stating each demo fact found among its prompt's top "
                  f"{RECALL_AT}, averaged over the fact prompts).", ""]
    for number, entry in enumerate(report["prompts"], start=1):
        lines += [f"## {number}. {entry['prompt']} → {entry['completion'].strip()}", ""]
        if f"recall_at_{RECALL_AT}" in entry:
            lines += [f"Recall@{RECALL_AT} {entry[f'recall_at_{RECALL_AT}']:.2f}: planted documents "
                      f"{entry['planted_documents']} rank {entry['planted_ranks']}.", ""]
        for title, key in (("Top positive (helpful)", "top_positive"), ("Top negative (harmful)", "top_negative")):
            lines += [f"### {title}", ""]
            if not entry[key]:
                lines += ["(none)", ""]
            for item in entry[key]:
                excerpt = _excerpt(item["text"], excerpt_chars)
                lines.append(f"- **#{item['index']}** score {item['score']:.4g}: {excerpt}")
            lines.append("")
    return "\n".join(lines)


def plot_score_distributions(scores: torch.Tensor, prompts: list[Prompt], path: Path) -> Path:
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
        ax.set_xlabel("influence score", fontsize=8)
        ax.set_ylabel("training examples", fontsize=8)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    return _save(fig, path)
