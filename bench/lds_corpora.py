"""Every scoring method's LDS on three corpora, with paired differences: the evaluation the scoring
defaults are chosen by (`make lds-corpora`).

Per corpus (bench/corpora.py: demo, demo-hard, jargon; 24 prompts each), in ARTIFACTS_URI/<corpus>
(default ./artifacts/corpora/<corpus>): the model is trained, factors fitted, and the prompts scored
once per method (compute_scores with SCORE_FUSION and ENSEMBLE_SEEDS, under the method's scores
name; the ensemble stage first makes the members an ensemble averages); one `python -m jobs lds` run
retrains the subsets and correlates them all beside its baselines (BM25, identity, random). The
confidence-weighted fusion, an idea not made a setting, is correlated here with the same subsets by
influence_core.lds.

A method is better than another when its paired difference over the 72 prompts together exceeds two
standard errors and it is not worse by more than one standard error on any corpus. Writes
docs/results/lds_corpora.md and bench/lds_corpora.json.

    python bench/lds_corpora.py [--corpora demo,demo-hard,jargon] [--members 3]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpora import CORPORA, JARGON_DOCUMENTS, prompts_file, write_jargon  # noqa: E402
from influence_core import lds  # noqa: E402
from influence_core.fusion import corpus_bm25, prompt_bm25, zscores  # noqa: E402

# scores name: (what it is, compute_scores settings); the first is EK-FAC alone, the defaults before.
SINGLE = "ekfac"


def zmean(weight: float) -> tuple[str, dict]:
    return (f"z-score mean, {weight:g} on BM25 (SCORE_FUSION=bm25_zmean, FUSION_WEIGHT={weight:g})",
            {"SCORE_FUSION": "bm25_zmean", "FUSION_WEIGHT": str(weight)})


def gate(fraction: float) -> tuple[str, dict]:
    return (f"EK-FAC within BM25's top {fraction:.0%} (SCORE_FUSION=bm25_gate, GATE_FRACTION={fraction:g})",
            {"SCORE_FUSION": "bm25_gate", "GATE_FRACTION": str(fraction)})


METHODS = {
    SINGLE: ("EK-FAC alone (SCORE_FUSION=none, ENSEMBLE_SEEDS=1)", {}),
    **{f"zmean_{round(100 * weight)}": zmean(weight) for weight in (0.25, 0.5, 0.75)},
    **{f"gate_{round(100 * fraction)}": gate(fraction) for fraction in (0.1, 0.2, 0.4)},
}


def ensembles(members: int) -> dict[str, tuple[str, dict]]:
    """The ensemble methods: EK-FAC averaged over `members` models, alone and within BM25's top 20%."""
    if members == 1:
        return {}
    seeds = {"ENSEMBLE_SEEDS": str(members)}
    label, fused = gate(0.2)
    return {"ensemble": (f"ensemble: EK-FAC averaged over {members} models (ENSEMBLE_SEEDS={members})", seeds),
            "ensemble_gate_20": (f"ensemble of {members}, {label[:label.index(' (')].removeprefix('EK-FAC ')} "
                                 f"(ENSEMBLE_SEEDS={members}, SCORE_FUSION=bm25_gate)", {**seeds, **fused})}
BASELINES = {"bm25": "BM25 on prompt + completion", "identity": "identity (gradient dot products)",
             "random": "random scores"}


def jobs(*args: str, env: dict) -> None:
    """Run `python -m jobs ...` with `env` added (a stage skips what it has published)."""
    result = subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, env={**os.environ, **env},
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"python -m jobs {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def corpus_env(corpus: str, root: Path) -> dict:
    env = {"ARTIFACTS_URI": str(root / corpus), "PROMPTS": str(prompts_file(corpus)), "LOG_LEVEL": "WARNING",
           "ENSEMBLE_SEEDS": "1"}  # one model, but where a method says otherwise
    if corpus == "jargon":
        env |= {"DATASET": str(write_jargon(root / "jargon.jsonl")), "NUM_EXAMPLES": str(JARGON_DOCUMENTS)}
    else:
        env["DATASET"] = corpus
    return env


def cost(artifacts: Path, *outputs: str) -> float:
    """The seconds the outputs took when they were made."""
    return sum(json.loads((artifacts / output / "_SUCCESS").read_text())["timings"]["seconds"] for output in outputs)


def correlation_seconds(artifacts: Path) -> float:
    """The lds report's own seconds: its run's time less the subsets that run retrained first."""
    timings = json.loads((artifacts / "reports/lds/_SUCCESS").read_text())["timings"]
    retrained = [json.loads(path.read_text())["timings"] for path in (artifacts / "lds/subsets").glob("*/_SUCCESS")]
    return timings["seconds"] - sum(t["seconds"] for t in retrained if t["started_unix"] >= timings["started_unix"])


def influence(artifacts: Path, name: str = SINGLE) -> torch.Tensor:
    from influence_core.artifacts import Scores

    return Scores.influence(artifacts / Scores(name).relative).double()


def evaluate_corpus(corpus: str, root: Path, members: int) -> dict:
    """Every method's per-prompt LDS on one corpus, and the seconds each part took."""
    from datasets import load_from_disk

    env = corpus_env(corpus, root)
    artifacts = Path(env["ARTIFACTS_URI"])
    methods = {**METHODS, **ensembles(members)}
    jobs("train", env=env)
    jobs("fit_factors", env=env)
    for name, (_, settings) in methods.items():
        if "ENSEMBLE_SEEDS" in settings:  # its members' models and factors, made once (skipped when done)
            jobs("ensemble", env={**env, **settings})
        jobs("compute_scores", "--scores_name", name, env={**env, **settings})  # scores the members too
    jobs("lds", "--lds_scores", ",".join(methods), env=env)
    # What each part cost when it was made (the outputs' _SUCCESS timings): true across reruns too.
    seconds = {"train": cost(artifacts, "model"), "fit_factors": cost(artifacts, "influence/factors_tiny_lm_factors"),
               **{f"compute_scores {name}": cost(artifacts, f"influence/scores_{name}") for name in methods},
               **{f"ensemble member {number}": cost(artifacts / f"ensemble/member_{number}", "model",
                                                    "influence/factors_tiny_lm_factors", "influence/scores_ensemble")
                  for number in range(1, members)},
               "lds retraining": cost(artifacts, *[f"lds/subsets/{path.parent.name}" for path in
                                                   (artifacts / "lds/subsets").glob("*/_SUCCESS")]),
               "lds identity baseline": cost(artifacts, "influence/factors_lds_identity",
                                             "influence/scores_lds_identity"),
               "lds correlations": correlation_seconds(artifacts)}
    result = json.loads((artifacts / "reports/lds/lds.json").read_text())
    per_prompt = {name: result["methods"][name]["per_prompt"] for name in [*methods, *BASELINES]}

    # The subsets again, from the published files: what the stage correlated with (checked below).
    subsets = [json.loads(path.read_text()) for path in sorted((artifacts / "lds/subsets").glob("*/measurements.json"))]
    subsets = [subset for subset in subsets if subset["subset"] < result["subsets"]]
    single = influence(artifacts)
    mask = lds.subset_mask([subset["examples"] for subset in subsets], single.shape[1])
    measured = lds.mean_measurements(subsets, "language_modeling", single.shape[0])
    again = max(abs(a - b) for a, b in zip(lds.lds(single, mask, measured), per_prompt[SINGLE]))
    if again > 1e-6:  # the offline methods below would be correlated with other measurements than the stage's
        print(f"warning: {corpus}: EK-FAC's LDS recomputed here differs from the stage's by {again:.2g}", flush=True)
    texts = load_from_disk(str(artifacts / "data/train"))["text"]
    from influence_core.prompts import Prompt

    prompts = [Prompt(prompt=p["prompt"], completion=p["completion"]) for p in result["prompts"]]
    bm25 = prompt_bm25(prompts, corpus_bm25(artifacts / "data/train"))
    # Our idea: lean on BM25 as far as the model is sure of the completion (its probability), where the
    # influence's gradients shrink to noise; on influence where the model still learns the completion.
    confidence = torch.tensor([p["probability"] for p in result["prompts"]], dtype=torch.float64)[:, None]
    confident = (1 - confidence) * zscores(single) + confidence * zscores(bm25)
    per_prompt["confidence"] = lds.lds(confident, mask, measured)
    return {"per_prompt": per_prompt, "seconds": seconds, "subsets": result["subsets"], "seeds": result["seeds"],
            "documents": len(texts), "prompts": result["prompts"]}


def labels(members: int) -> dict[str, str]:
    return {**{name: label for name, (label, _) in {**METHODS, **ensembles(members)}.items()},
            "confidence": "ours: z-score mean, the completion's probability on BM25 (offline)",
            **{name: f"baseline: {label}" for name, label in BASELINES.items()}}


def paired(study: dict, name: str, against: str) -> dict:
    """Paired differences of `name` from `against`: per corpus, and over every prompt together."""
    out = {}
    together_a, together_b = [], []
    for corpus, result in study["corpora"].items():
        a, b = result["per_prompt"][name], result["per_prompt"][against]
        out[corpus] = dict(zip(("difference", "stderr"), lds.paired_difference(a, b)))
        together_a += a
        together_b += b
    out["together"] = dict(zip(("difference", "stderr"), lds.paired_difference(together_a, together_b)))
    return out


def better(differences: dict) -> bool:
    """Better by the rule: over two standard errors together, not worse by over one on any corpus."""
    together = differences["together"]
    return together["difference"] > 2 * together["stderr"] and all(
        d["difference"] >= -d["stderr"] for corpus, d in differences.items() if corpus != "together")


def delta(row: dict, name: str, against: str, corpus: str = "together") -> str:
    """A table cell: the row's paired difference from `against`, marked when better by the rule."""
    if against == name:
        return ""
    d = row["paired"][against][corpus]
    mark = " **better**" if corpus == "together" and row["better"][against] else ""
    return f"{d['difference']:+.3f} ± {d['stderr']:.3f}{mark}"


def render(study: dict) -> str:
    corpora = list(study["corpora"])
    lines = [
        "# Scoring methods on three corpora",
        "",
        f"LDS of each method (`python bench/lds_corpora.py`, {study['minutes']:.0f} minutes of stage time on "
        f"this 2-core machine, {study['date']}): the `tiny` model retrained on {study['subsets']} random "
        "halves of its corpus x "
        f"{study['seeds']} training seeds, Spearman per prompt, the mean over the corpus's 24 prompts ± its "
        "standard error. Δ: the paired difference (mean over prompts of the method's correlation minus the "
        f"other's, ± its standard error), per corpus and over the {24 * len(corpora)} prompts together. "
        "**better**: over two "
        "standard errors together and not worse by more than one on any corpus.",
        "",
        "Corpora: " + "; ".join(f"{corpus} ({result['documents']} documents)"
                                for corpus, result in study["corpora"].items()) + "."
        + ("" if len(corpora) == len(CORPORA) else
           f" **Partial: {len(corpora)} of the {len(CORPORA)} corpora evaluated so far** (a rerun of the command "
           "resumes: every stage skips what it has published)."),
        "",
        "| method | " + " | ".join(corpora) + " | Δ from EK-FAC alone, together | Δ from BM25, together | "
        + " | ".join(f"Δ EK-FAC / Δ BM25, {corpus}" for corpus in corpora) + " |",
        "|---|" + "---|" * (2 * len(corpora) + 2),
    ]
    for name, row in study["rows"].items():
        cells = [f"{row['lds'][corpus]['lds']:.3f} ± {row['lds'][corpus]['stderr']:.3f}" for corpus in corpora]
        per_corpus = [f"{delta(row, name, SINGLE, corpus)} / {delta(row, name, 'bm25', corpus)}".strip(" /")
                      for corpus in corpora]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {delta(row, name, SINGLE)} | "
                     f"{delta(row, name, 'bm25')} | " + " | ".join(per_corpus) + " |")
    lines += ["", "## Seconds", ""]
    for corpus, result in study["corpora"].items():
        lines.append(f"- {corpus}: " + ", ".join(f"{part} {value:.0f}" for part, value in result["seconds"].items()))
    lines += ["", "## Prompts", "", "bench/corpora/<corpus>.json, drawn by rule (bench/corpora.py). The model's "
              "probability of each completion:", ""]
    for corpus, result in study["corpora"].items():
        lines.append(f"- {corpus}: " + "; ".join(f"{p['prompt']!r} → {p['completion'].strip()!r} "
                                                 f"{p['probability']:.2f}" for p in result["prompts"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default=",".join(CORPORA), help="Comma-separated corpora")
    parser.add_argument("--members", type=int, default=3, help="Models in the ensembles (1: none)")
    args = parser.parse_args()
    root = Path(os.environ.get("ARTIFACTS_URI", ROOT / "artifacts" / "corpora"))
    study = {"corpora": {}}
    for corpus in args.corpora.split(","):  # the table is written after each corpus
        print(f"{corpus} ...", flush=True)
        study["corpora"][corpus] = evaluate_corpus(corpus, root, args.members)
        write(study, args.members)
    print(render(study))


def write(study: dict, members: int) -> None:
    """bench/lds_corpora.json and docs/results/lds_corpora.md for the corpora evaluated so far."""
    first = next(iter(study["corpora"].values()))
    study |= {"subsets": first["subsets"], "seeds": first["seeds"], "date": time.strftime("%Y-%m-%d"),
              "minutes": sum(sum(result["seconds"].values()) for result in study["corpora"].values()) / 60}
    study["rows"] = {}
    for name, label in labels(members).items():
        row = {"label": label, "lds": {}, "paired": {}, "better": {}}
        for corpus, result in study["corpora"].items():
            row["lds"][corpus] = dict(zip(("lds", "stderr"), lds.mean_and_stderr(result["per_prompt"][name])))
        for against in (SINGLE, "bm25"):
            if against != name:
                row["paired"][against] = paired(study, name, against)
                row["better"][against] = better(row["paired"][against])
        study["rows"][name] = row
    (ROOT / "bench" / "lds_corpora.json").write_text(json.dumps(study, indent=1, ensure_ascii=False))
    (ROOT / "docs" / "results" / "lds_corpora.md").write_text(render(study))


if __name__ == "__main__":
    main()
