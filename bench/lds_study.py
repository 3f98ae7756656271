"""The LDS of the choices behind the scoring defaults, on the demo (`make lds-study`).

Each variant is fitted and scored by the stages under a name of its own, in ARTIFACTS_URI
(default ./artifacts, where `make demo` and `make lds` leave the model and the retrained subsets);
one `python -m jobs lds` run correlates them all with the same retrained subsets. Ensembles average
the scores of models trained with other training seeds (TRAINING_SEED) on the same corpus and
tokenizer, correlated here with the published subsets by influence_core.lds. Writes
docs/results/lds_study.md and bench/lds_study.json.

    python bench/lds_study.py [--members 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from datasets import load_from_disk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# scores name: (what it varies, fit_factors flags, compute_scores flags); the first is the defaults'
# (the pipeline's own factors and scores, tiny_lm_factors and prompt_scores).
DEFAULT = "prompt_scores"
VARIANTS = {
    DEFAULT: ("the defaults: EK-FAC, MLP projections, damping 1e-8, language_modeling", [], []),
    "study_heuristic": ("damping: Kronfluence's heuristic (0.1 x mean eigenvalue)", [],
                        ["--damping_factor", "heuristic"]),
    "study_damping_1e-4": ("damping 1e-4", [], ["--damping_factor", "1e-4"]),
    "study_damping_1e-6": ("damping 1e-6", [], ["--damping_factor", "1e-6"]),
    "study_attention": ("tracked modules: MLP and attention projections", ["--tracked_modules", "mlp|attn"], []),
    "study_margin": ("task: margin", [], ["--task", "margin"]),
    "study_kfac": ("strategy: K-FAC", ["--factor_strategy", "kfac"], []),
    "study_kfac_heuristic": ("strategy: K-FAC, heuristic damping", ["--factor_strategy", "kfac"],
                             ["--damping_factor", "heuristic"]),
}


def jobs(*args: str, env: dict | None = None) -> float:
    """Run `python -m jobs ...`; returns its wall seconds."""
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"python -m jobs {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.time() - started


def fitted_and_scored(name: str, fit: list[str], score: list[str], env: dict | None = None) -> float:
    """Fit and score one variant (factors named after the fit flags, so variants share them)."""
    if name == DEFAULT:
        return jobs("fit_factors", env=env) + jobs("compute_scores", env=env)
    factors = "study_" + ("_".join(flag.strip("-").replace("|", "_") for flag in fit) or "default")
    return (jobs("fit_factors", "--factors_name", factors, *fit, env=env)
            + jobs("compute_scores", "--factors_name", factors, "--scores_name", name, *score, env=env))


def cost(artifacts: Path, *outputs: str) -> float:
    """The seconds the outputs took when they were made (their _SUCCESS timings): true on reruns too."""
    return sum(json.loads((artifacts / output / "_SUCCESS").read_text())["timings"]["seconds"] for output in outputs)


def member(artifacts: Path, seed: int, epochs: float | None) -> tuple[Path, float]:
    """An ensemble member: the demo's model trained with another training seed (and optionally fewer
    epochs) on the same corpus and tokenizer, fitted and scored at the defaults. Returns its
    influence directory and what it cost (train + fit + score seconds)."""
    name = f"training_seed_{seed}" + (f"_epochs_{epochs:g}" if epochs else "")
    root = artifacts / "study-members" / name
    env = {"ARTIFACTS_URI": str(root), "TRAINING_SEED": str(seed), **({"NUM_TRAIN_EPOCHS": str(epochs)} if epochs
                                                                      else {})}
    jobs("train", env=env)
    fitted_and_scored(DEFAULT, [], [], env=env)
    tokens = [load_from_disk(str(path / "data/train"))["input_ids"] for path in (root, artifacts)]
    assert tokens[0] == tokens[1], f"{name}: another corpus or tokenizer than the model's"
    seconds = cost(root, "model", "influence/factors_tiny_lm_factors", f"influence/scores_{DEFAULT}")
    print(f"ensemble member {name}: {seconds:.0f} s to train, fit and score", flush=True)
    return root / "influence", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3, help="Largest ensemble (models with training seeds 0..)")
    parser.add_argument("--cheap_epochs", type=float, default=5,
                        help="Epochs of the cheaper members (the default model trains 10)")
    args = parser.parse_args()
    artifacts = Path(os.environ.setdefault("ARTIFACTS_URI", str(ROOT / "artifacts")))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    started = time.time()
    jobs("train")
    seconds = {}
    for name, (_, fit, score) in VARIANTS.items():
        fitted_and_scored(name, fit, score)
        factors = json.loads((artifacts / f"influence/scores_{name}/_SUCCESS").read_text())["settings"]["factors_name"]
        seconds[name] = cost(artifacts, f"influence/factors_{factors}", f"influence/scores_{name}")
        print(f"{name}: fitted and scored in {seconds[name]:.0f} s", flush=True)
    jobs("lds", "--lds_scores", ",".join(VARIANTS))
    seconds["lds"] = cost(artifacts, "reports/lds")
    result = json.loads((artifacts / "reports/lds/lds.json").read_text())

    # Ensembles: models trained with other training seeds on the same corpus and tokenizer, at full
    # or at fewer epochs (the cheaper way), each averaged with the default model's scores.
    seconds["model"] = cost(artifacts, "model")
    groups = {}
    for epochs in (None, args.cheap_epochs):
        members = [member(artifacts, seed, epochs) for seed in range(1, args.members)]
        for size in range(2, args.members + 1):
            if epochs is None or size == args.members:
                label = (f"{size} models (training seeds 0..{size - 1})" if epochs is None else
                         f"{size} models, the other {size - 1} trained {epochs:g} epochs (seeds 1..{size - 1})")
                groups[label] = [artifacts / "influence", *(path for path, _ in members[:size - 1])]
                seconds[f"ensemble: {label}"] = sum(extra for _, extra in members[:size - 1])
    ensembles = ensemble_lds(artifacts, groups, result)

    rows = [{"name": name, "variant": VARIANTS[name][0], **pick(result["methods"][name]),
             "paired": paired(result, name)} for name in VARIANTS]
    rows += ensembles
    rows += [{"name": name, "variant": f"baseline: {method['label']}", **pick(method), "paired": paired(result, name)}
             for name, method in result["methods"].items() if method["baseline"]]
    study = {"subsets": result["subsets"], "seeds": result["seeds"], "rows": rows, "seconds": seconds,
             "total_seconds": time.time() - started, "prompts": result["prompts"]}
    (ROOT / "bench" / "lds_study.json").write_text(json.dumps(study, indent=2, ensure_ascii=False))
    (ROOT / "docs" / "results" / "lds_study.md").write_text(render(study))
    print(render(study))


def pick(method: dict) -> dict:
    return {key: method[key] for key in ("lds", "stderr", "per_prompt")}


def paired(result: dict, name: str) -> dict:
    """The per-prompt difference from the defaults' correlations: mean and standard error."""
    from influence_core.lds import paired_difference

    difference, stderr = paired_difference(result["methods"][name]["per_prompt"],
                                           result["methods"][DEFAULT]["per_prompt"])
    return {"difference": difference, "stderr": stderr}


def ensemble_lds(artifacts: Path, groups: dict[str, list[Path]], result: dict) -> list[dict]:
    """LDS of each group's mean default scores against the published subsets."""
    from safetensors.torch import load_file

    from influence_core import lds

    published = sorted((artifacts / "lds" / "subsets").glob("*/measurements.json"))
    subsets = [subset for subset in (json.loads(path.read_text()) for path in published)
               if subset["subset"] < result["subsets"]]

    def scores(influence: Path) -> torch.Tensor:
        return load_file(str(influence / f"scores_{DEFAULT}" / "pairwise_scores.safetensors"))["all_modules"]

    single = scores(artifacts / "influence")
    examples = single.shape[1]
    mask = lds.subset_mask([subset["examples"] for subset in subsets], examples)
    measured = lds.mean_measurements(subsets, "language_modeling", single.shape[0])
    # The single model again from the same files: it must equal what the stage reported.
    check = lds.lds(single, mask, measured)
    assert max(abs(a - b) for a, b in zip(check, result["methods"][DEFAULT]["per_prompt"])) < 1e-9
    rows = []
    for label, members in groups.items():
        per_prompt = lds.lds(sum(scores(path) for path in members) / len(members), mask, measured)
        mean, stderr = lds.mean_and_stderr(per_prompt)
        difference, paired_stderr = lds.paired_difference(per_prompt, check)
        rows.append({"name": f"ensemble: {label}", "variant": f"ensemble: the defaults' scores averaged over {label}",
                     "lds": mean, "stderr": stderr, "per_prompt": per_prompt,
                     "paired": {"difference": difference, "stderr": paired_stderr}})
    return rows


def render(study: dict) -> str:
    lines = [
        "# LDS study: the choices behind the scoring defaults",
        "",
        f"Demo corpus, `tiny` model; LDS over {study['subsets']} random halves x {study['seeds']} training seeds "
        f"(`python -m jobs lds`), ± the standard error over the {len(study['prompts'])} prompts; the paired "
        "difference is the mean over prompts of (variant - defaults) in correlation, ± its standard error.",
        "",
        "| variant | LDS | ± stderr | paired difference from the defaults |",
        "|---|---|---|---|",
    ]
    for row in study["rows"]:
        difference = "" if row["name"] == DEFAULT else (
            f"{row['paired']['difference']:+.3f} ± {row['paired']['stderr']:.3f}")
        lines.append(f"| {row['variant']} | {row['lds']:.3f} | {row['stderr']:.3f} | {difference} |")
    lines += ["", "Seconds, from the outputs' _SUCCESS timings (fit factors + compute scores per variant; the "
              "correlations; the default model's training; train + fit + score of an ensemble's extra members):", ""]
    lines += [f"- {name}: {value:.0f}" for name, value in study["seconds"].items()]
    lines += ["", f"Total: {study['total_seconds'] / 60:.1f} minutes."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
