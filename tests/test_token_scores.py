"""Per-token influence of the examples a report shows: they split the example's score exactly."""

from __future__ import annotations

import json

from datasets import load_from_disk
from safetensors.torch import load_file

from influence_core.token_scores import TrainingPaddedTo, group_prompts

MAX_RELATIVE_DIFFERENCE = 1e-4


def test_per_token_scores_sum_to_the_example_score(demo_run, demo_report):
    totals = load_file(str(demo_run / "influence/scores_prompt_scores/pairwise_scores.safetensors"))["all_modules"]
    ids = load_from_disk(str(demo_run / "data/train"))["input_ids"]
    checked = 0
    for row, entry in zip(totals, demo_report["prompts"]):
        for item in entry["top_positive"] + entry["top_negative"]:
            assert len(item["tokens"]) == len(item["token_scores"]) == len(ids[item["index"]])
            total = float(row[item["index"]])
            assert abs(sum(item["token_scores"]) - total) <= MAX_RELATIVE_DIFFERENCE * abs(total), item["index"]
            assert abs(item["score"] - total) <= 1e-6 * abs(total)
            checked += 1
    assert checked == sum(len(e["top_positive"]) + len(e["top_negative"]) for e in demo_report["prompts"]) > 0


def test_tokens_spell_the_example(demo_report):
    item = demo_report["prompts"][0]["top_positive"][0]
    text = "".join(item["tokens"])
    assert " ".join(item["text"].split())[:60] in " ".join(text.split())


def test_influence_on_a_planted_fact_sits_near_the_fact(demo_report):
    """For the capital prompt, the top document's largest token score lies in the sentence that
    states the fact (on the tokens that predict 'Quistador'), not in the filler around it."""
    entry = demo_report["prompts"][0]
    assert entry["completion"].strip() == "Quistador"
    item = entry["top_positive"][0]
    strongest = max(range(len(item["tokens"])), key=lambda i: item["token_scores"][i])
    before = "".join(item["tokens"][: strongest + 1])
    after = "".join(item["tokens"][strongest + 1: strongest + 4])
    assert "Velmora" in before[-60:] and "Quistador" in after, (before[-60:], after)


def test_prompts_are_grouped_within_the_budget():
    examples = [[0, 1], [1, 2], [], [3, 4]]
    lengths = {0: 10, 1: 20, 2: 5, 3: 10, 4: 10}
    assert group_prompts(examples, lengths, weights=1, budget=1e9) == [[0, 1, 3]]
    # prompts 0 and 1 together: 2 prompts x 3 examples x 20 tokens = 120 multiply-adds per weight
    assert group_prompts(examples, lengths, weights=1, budget=120) == [[0, 1], [3]]
    assert group_prompts(examples, lengths, weights=1, budget=1) == [[0], [1], [3]]


def test_training_examples_are_padded_to_one_length_and_queries_are_not():
    collate = TrainingPaddedTo(pad_token_id=0, length=6)
    batch = collate([{"input_ids": [5, 6], "attention_mask": [1, 1]}, {"input_ids": [7], "attention_mask": [1]}])
    assert batch["input_ids"].tolist() == [[5, 6, 0, 0, 0, 0], [7, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6] + [-100] * 4, [7] + [-100] * 5]
    query = collate([{"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6]}])
    assert query["input_ids"].tolist() == [[5, 6]] and query["labels"].tolist() == [[-100, 6]]


def test_per_token_scores_use_the_recorded_score_arguments(demo_run):
    from influence_core.token_scores import recorded_score_arguments

    scores_dir = demo_run / "influence/scores_prompt_scores"
    args = recorded_score_arguments(scores_dir)
    recorded = json.loads((scores_dir / "score_arguments.json").read_text())
    assert args.damping_factor == recorded["damping_factor"]
    assert str(args.precondition_dtype) == recorded["precondition_dtype"]
