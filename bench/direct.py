"""The baselines the benchmark compares our stages with, one process per run:

- `train`: the Trainer loop on the published training examples: each step's random examples in
  length-balanced micro-batches padded to their longest (ours), or in one batch padded to the max
  length (`--padding max --micro_batches 1`, the original scripts' way).
- `factors` / `scores`: the same Kronfluence calls our stages make, made directly (no settings,
  storage, manifests or checksums), with the collate and batch sizes given on the command line
  (and for scores, the training examples sorted by length as ours are);
  `--padding max --query_batch_size 1` is the original scripts' way (corpus order).

Each run prints one JSON line of what it measured itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def train(args: argparse.Namespace) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from influence_core.modeling import build_model
    from influence_core.training import TrainingPlan
    from influence_core.training import train as train_model

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(Path(args.artifacts) / "model")
    examples = load_from_disk(str(Path(args.artifacts) / "data/train"))
    model = build_model(args.preset, tokenizer, args.max_length)
    plan = TrainingPlan(batch_size=args.batch_size, num_train_epochs=args.epochs, learning_rate=2e-3,
                        warmup_ratio=0.05, weight_decay=0.0, seed=args.seed, micro_batches=args.micro_batches,
                        pad_to=args.max_length if args.padding == "max" else None, checkpoints=1)
    metrics = train_model(model, examples, tokenizer, plan, Path(args.work) / "trainer")
    return {"corpus_loss": corpus_loss(model, examples, tokenizer.pad_token_id),
            **{key: metrics[key] for key in ("final_loss", "tokens_per_second", "train_seconds", "non_padding_tokens")}}


def corpus_loss(model, examples, pad_token_id: int, batch_size: int = 32) -> float:
    """The trained model's cross-entropy per predicted token over every training example: comparable
    across paddings and batch orders, unlike the last logged training loss, which is the mean over
    whichever batches came last."""
    import torch
    import torch.nn.functional as F

    from influence_core.data import PadCollator

    collate, total, count = PadCollator(pad_token_id), 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate([examples[i] for i in range(start, min(start + batch_size, len(examples)))])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            total += F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count


def analyzer_for(args: argparse.Namespace):
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.utils.dataset import DataLoaderKwargs
    from transformers import AutoTokenizer

    from influence_core.data import PadCollator
    from influence_core.modeling import load_model, mlp_module_names
    from influence_core.tasks import TASKS

    model_dir = Path(args.artifacts) / "model"
    model, tokenizer = load_model(model_dir), AutoTokenizer.from_pretrained(model_dir)
    task = TASKS["language_modeling"](tracked_modules=mlp_module_names(model.config.num_layers))
    analyzer = Analyzer(analysis_name="influence", model=prepare_model(model, task), task=task,
                        output_dir=args.work, disable_model_save=True, disable_tqdm=True, log_level=None)
    pad_to = model.config.max_position_embeddings if args.padding == "max" else None
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=PadCollator(tokenizer.pad_token_id, pad_to)))
    return analyzer, tokenizer, model.config.max_position_embeddings


def training_examples(args: argparse.Namespace):
    from datasets import load_from_disk

    return load_from_disk(str(Path(args.artifacts) / "data/train")).select_columns(["input_ids", "attention_mask"])


def factors(args: argparse.Namespace) -> dict:
    from kronfluence.arguments import FactorArguments

    analyzer, _, _ = analyzer_for(args)
    start = time.perf_counter()
    analyzer.fit_all_factors(factors_name="direct", dataset=training_examples(args),
                             per_device_batch_size=args.batch_size,
                             factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
    return {"kronfluence_seconds": time.perf_counter() - start}


def scores(args: argparse.Namespace) -> dict:
    import torch
    from kronfluence.arguments import ScoreArguments
    from safetensors.torch import load_file

    from influence_core.corpus_order import length_sorted, restore_training_order
    from influence_core.data import tokenize_prompts
    from influence_core.prompts import parse_prompts
    from influence_core.settings import DEFAULT_DAMPING

    factors_dir = Path(args.work) / "influence" / "factors_direct"
    factors_dir.parent.mkdir(parents=True, exist_ok=True)
    if not factors_dir.exists():
        factors_dir.symlink_to(Path(args.factors).resolve(), target_is_directory=True)
    analyzer, tokenizer, context = analyzer_for(args)
    prompts = parse_prompts(Path(args.prompts).read_bytes(), args.prompts)
    queries = tokenize_prompts(prompts, tokenizer, context)
    train_examples, order = training_examples(args), None
    if args.padding == "longest":  # ours sorts by length; the original scripts do not
        train_examples, order = length_sorted(train_examples)
    start = time.perf_counter()
    analyzer.compute_pairwise_scores(scores_name="direct", factors_name="direct", query_dataset=queries,
                                     train_dataset=train_examples,
                                     per_device_query_batch_size=args.query_batch_size or len(queries),
                                     per_device_train_batch_size=args.batch_size,
                                     score_args=ScoreArguments(damping_factor=DEFAULT_DAMPING),
                                     overwrite_output_dir=True)
    seconds = time.perf_counter() - start
    path = Path(args.work) / "influence" / "scores_direct" / "pairwise_scores.safetensors"
    if order is not None:
        restore_training_order(path, order)
    matrix = load_file(str(path))["all_modules"]
    return {"kronfluence_seconds": seconds, "top10": torch.topk(matrix, 10).indices.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["train", "factors", "scores"])
    parser.add_argument("--artifacts", required=True, help="a local artifacts dir with model/ and data/train/")
    parser.add_argument("--work", required=True)
    parser.add_argument("--padding", choices=["longest", "max"], default="longest")
    parser.add_argument("--micro_batches", type=int, default=4, help="train: forward passes per step")
    parser.add_argument("--seed", type=int, default=0, help="train: model initialisation and batch order")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--query_batch_size", type=int, default=None)
    parser.add_argument("--factors", help="factors directory (scores)")
    parser.add_argument("--prompts", default=str(ROOT / "prompts.json"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=2.0)
    args = parser.parse_args()

    from influence_core.runtime import configure_logging, configure_threads

    configure_logging("WARNING")
    configure_threads()
    print(json.dumps({"train": train, "factors": factors, "scores": scores}[args.what](args)))


if __name__ == "__main__":
    main()
