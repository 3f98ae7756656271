"""Lineage: a published result belongs to the inputs it names. A stage whose inputs were made from
other versions of each other refuses in one line; one whose external inputs (the documents of
DATASET, the files of MODEL or TOKENIZER_NAME) changed runs again; an imported model is never
silently replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import load_from_disk
from safetensors.torch import load_file

from influence_core.settings import ImportModelSettings, TrainSettings, load_settings
from influence_core.stages import BY_NAME, STAGES
from jobs import import_model, train
from tests.conftest import SMALL, jobs_in_process, one_line_refusal
from tests.families import save_tiny_model, tokenizer_for

QUICK_TRAIN = ["--num_train_epochs", "1", "--max_length", "32", "--vocab_size", "300", "--batch_size", "8",
               "--checkpoints", "1"]


def write_documents(path: Path, first: str, rest: list[str] | None = None) -> Path:
    """A .jsonl corpus: `first`, then `rest` (by default 39 short documents)."""
    rest = rest if rest is not None else [f"Document {number} says that the river {number} flows into lake "
                                          f"{number % 7}." for number in range(1, 40)]
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in [first, *rest]))
    return path


def train_in_process(artifacts: Path, *flags: str) -> None:
    train.main(load_settings(TrainSettings, ["--artifacts_uri", str(artifacts), *QUICK_TRAIN, *flags]))


@pytest.mark.slow
def test_train_runs_again_when_the_documents_of_the_dataset_change(tmp_path):
    docs = write_documents(tmp_path / "docs.jsonl", "The first document is about herons.")
    artifacts = tmp_path / "artifacts"
    train_in_process(artifacts, "--dataset", str(docs))
    assert load_from_disk(str(artifacts / "data/train"))["text"][0] == "The first document is about herons."
    write_documents(docs, "The first document is about otters now.")
    train_in_process(artifacts, "--dataset", str(docs))
    assert load_from_disk(str(artifacts / "data/train"))["text"][0] == "The first document is about otters now."


def weights(artifacts: Path) -> dict:
    return load_file(str(artifacts / "model/model.safetensors"))


@pytest.mark.slow
def test_a_model_folder_saved_again_is_fine_tuned_and_imported_again(tmp_path):
    docs = write_documents(tmp_path / "docs.jsonl", "The first document is about herons.")
    source = save_tiny_model("gpt2", tmp_path / "gpt2", seed=0)
    tuned, imported = tmp_path / "tuned", tmp_path / "imported"
    train_in_process(tuned, "--dataset", str(docs), "--model", str(source))
    import_model.main(load_settings(ImportModelSettings, ["--artifacts_uri", str(imported), "--model", str(source),
                                                          "--dataset", str(docs), "--max_length", "32"]))
    before = weights(tuned), weights(imported)
    save_tiny_model("gpt2", source, seed=1)  # the same folder, other weights
    train_in_process(tuned, "--dataset", str(docs), "--model", str(source))
    import_model.main(load_settings(ImportModelSettings, ["--artifacts_uri", str(imported), "--model", str(source),
                                                          "--dataset", str(docs), "--max_length", "32"]))
    for old, new in zip(before, (weights(tuned), weights(imported))):
        assert any(not old[name].equal(new[name]) for name in old)


@pytest.mark.slow
def test_a_tokenizer_folder_saved_again_trains_again(tmp_path):
    docs = write_documents(tmp_path / "docs.jsonl", "The first document is about herons.")
    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines()]
    folder = tmp_path / "tokenizer"
    tokenizer_for("gpt_neo", texts, vocab_size=400).save_pretrained(folder)
    artifacts = tmp_path / "artifacts"
    train_in_process(artifacts, "--dataset", str(docs), "--tokenizer_name", str(folder))
    first = json.loads((artifacts / "model/config.json").read_text())["vocab_size"]
    shutil.rmtree(folder)
    tokenizer_for("gpt_neo", texts, vocab_size=320).save_pretrained(folder)
    train_in_process(artifacts, "--dataset", str(docs), "--tokenizer_name", str(folder))
    assert json.loads((artifacts / "model/config.json").read_text())["vocab_size"] != first


def test_train_refuses_to_replace_an_imported_model(tmp_path):
    docs = write_documents(tmp_path / "docs.jsonl", "The first document is about herons.")
    source = save_tiny_model("gpt2", tmp_path / "gpt2")
    artifacts = tmp_path / "artifacts"
    import_model.main(load_settings(ImportModelSettings, ["--artifacts_uri", str(artifacts), "--model", str(source),
                                                          "--dataset", str(docs), "--max_length", "32"]))
    line = one_line_refusal(jobs_in_process("train", "--artifacts_uri", str(artifacts), "--dataset", str(docs),
                                            *QUICK_TRAIN, "--log_level", "ERROR"))
    assert "import_model" in line and "FORCE=true" in line
    assert json.loads((artifacts / "model/config.json").read_text())["model_type"] == "gpt2"


def test_lds_refuses_scores_of_an_earlier_model(small_pipeline, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(small_pipeline, artifacts)
    flags = [f"--{key.lower()}={value}" for key, value in SMALL.items() if key.lower() in TrainSettings.model_fields]
    train.main(load_settings(TrainSettings, ["--artifacts_uri", str(artifacts), *flags, "--force",
                                             "--learning_rate", "1e-2"]))
    line = one_line_refusal(jobs_in_process("lds", "--artifacts_uri", str(artifacts), "--lds_subsets", "2",
                                            "--lds_seeds", "1", "--log_level", "ERROR"))
    # The break nearest the start of the chain: the factors the scores were made from.
    assert f"{artifacts}/influence/factors_tiny_lm_factors was made from another {artifacts}/model " in line
    assert not (artifacts / "reports/lds").exists() and not (artifacts / "lds").exists()


# ---- every stage of the registry against every artifact upstream of it -------------------------

# The smallest run of every stage: 100 demo documents, a tiny model at 32 tokens for one epoch,
# identity factors, two prompts, two LDS subsets, one strategy evaluated, no per-token scores; and
# only errors logged, so that a refusal is the one line on stderr.
TINY = {"num_examples": 100, "num_train_epochs": 1, "max_length": 32, "vocab_size": 300, "batch_size": 8,
        "checkpoints": 1, "factor_strategy": "identity", "lds_subsets": 2, "lds_seeds": 1, "strategies": "identity",
        "per_token_scores": False, "num_influential": 2, "log_level": "ERROR"}
TWO_PROMPTS = [{"prompt": "The capital of Velmora is", "completion": " Quistador"},
               {"prompt": "The river Tallow flows into", "completion": " Lake Morwen"}]
# What re-producing a stage's output changes; a stage not listed is rerun with FORCE=true alone (its
# manifest, and so its fingerprint, is new all the same).
VARIED = {"train": {"learning_rate": 3e-3}, "fit_factors": {"factor_batch_size": 8},
          "compute_scores": {"train_batch_size": 8}, "compute_self_scores": {"train_batch_size": 8},
          "inspect_scores": {"num_influential": 3}}


def upstream(stage: str) -> set[str]:
    """The stages whose outputs `stage` reads, directly or through its inputs' inputs."""
    found, queue = set(), [kind.producer for kind in BY_NAME[stage].inputs]
    while queue:
        producer = queue.pop()
        if producer not in found:
            found.add(producer)
            queue += [kind.producer for kind in BY_NAME[producer].inputs]
    return found


def cli(stage: str, artifacts: Path, **changes) -> list[str]:
    """`python -m jobs <stage>` arguments: TINY and `changes`, those the stage has."""
    fields = BY_NAME[stage].settings.model_fields
    flags = [stage, f"--artifacts_uri={artifacts}"]
    for key, value in {**TINY, "prompts": artifacts.parent / "prompts.json", **changes}.items():
        if key in fields:
            flags.append((f"--{key}" if value else f"--no-{key}") if isinstance(value, bool) else f"--{key}={value}")
    return flags


def run(stage: str, artifacts: Path, **changes) -> tuple[int, str]:
    """A stage as `python -m jobs` runs it, in this process: its exit code and what it wrote to stderr."""
    return jobs_in_process(*cli(stage, artifacts, **changes))


def manifests(artifacts: Path) -> dict[str, str]:
    return {path.parent.relative_to(artifacts).as_posix(): path.read_text() for path in artifacts.rglob("_SUCCESS")}


# Every stage of the registry that reads artifacts, made once: the chain the scenarios start from.
ORDER = ("train", "fit_factors", "inspect_factors", "compute_scores", "compute_self_scores", "build_index", "lds",
         "inspect_scores", "evaluate")


@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory) -> Path:
    artifacts = tmp_path_factory.mktemp("chain") / "artifacts"
    (artifacts.parent / "prompts.json").write_text(json.dumps(TWO_PROMPTS))
    for stage in ORDER:
        assert run(stage, artifacts)[0] == 0, stage
    return artifacts


# (stage, what is made again): every stage that reads artifacts, after each stage whose outputs it
# reads is run again; every stage that reads none (train, import_model, pipeline, preview_data),
# after the documents of its DATASET change.
SCENARIOS = [(stage.name, producer) for stage in STAGES for producer in sorted(upstream(stage.name))]
SCENARIOS += [(stage.name, "DATASET") for stage in STAGES
              if not stage.inputs and "dataset" in stage.settings.model_fields]


def test_the_scenarios_cover_every_stage():
    assert {stage for stage, _ in SCENARIOS} == {stage.name for stage in STAGES}
    assert set(ORDER) >= {producer for _, producer in SCENARIOS} - {"DATASET"}


def outcome(stage: str, artifacts: Path, before: dict[str, str], code: int, err: str, extra: dict) -> None:
    """Either a refusal in one line that published nothing, or a run after which everything the
    stage published, and its outputs (made again, or still from what is there now), belong with
    what is published now: their manifests record what they were made from."""
    from influence_core.artifacts import Report, check_lineage, kind_of
    from influence_core.storage import Store

    if code == 2:
        line, = err.strip().splitlines()
        assert line.startswith("error: ") and "was made from another" in line, line
        assert manifests(artifacts) == before  # nothing published
        return
    assert code == 0, err[-3000:]
    store = Store(str(artifacts))
    published = [path for path, text in manifests(artifacts).items() if before.get(path) != text]
    settings = load_settings(BY_NAME[stage].settings, cli(stage, artifacts, **extra)[1:])
    outputs = BY_NAME[stage].outputs(settings)
    bound = [artifact for artifact in (*(kind_of(path)(relative=path) for path in published), *outputs)
             if artifact.bind(store) is not None]
    check_lineage(store, bound)  # raises on anything that does not belong with what is published now
    if stage == "fetch_report":  # its output is a folder of the user's: the report there now, whole
        report = Report(settings.scores_name).bind(store)
        check_lineage(store, [report])
        assert json.loads((extra["report_dir"] / "_SUCCESS").read_text()) == json.loads(before[report.relative])


@pytest.mark.xdist_group("lineage")  # on one worker, which makes tiny_chain once
@pytest.mark.parametrize("stage, producer", SCENARIOS, ids=[f"{s}-after-{p}" for s, p in SCENARIOS])
def test_a_stage_refuses_or_redoes_its_work_after_an_upstream_output_is_made_again(stage, producer, tiny_chain,
                                                                                  tmp_path):
    """What `stage` reads is made again: `producer`'s outputs with other settings, or the documents
    of DATASET edited. Then `stage` either refuses in one line (exit 2: its inputs no longer
    belong together) or runs, and makes again whatever of its own outputs was made from the old."""
    artifacts = tmp_path / "artifacts"
    (tmp_path / "prompts.json").write_text(json.dumps(TWO_PROMPTS))
    extra = {"report_dir": tmp_path / "report"}
    if producer == "DATASET":  # the corpus as a file of its own, run once, then edited
        from influence_core.demo_corpus import build_demo_corpus

        texts = build_demo_corpus(TINY["num_examples"]).texts
        extra["dataset"] = write_documents(tmp_path / "docs.jsonl", texts[0], texts[1:])
        extra["model"] = save_tiny_model("gpt2", tmp_path / "gpt2") if stage == "import_model" else None
        extra = {key: value for key, value in extra.items() if value is not None}
        assert run(stage, artifacts, **extra)[0] == 0
        write_documents(extra["dataset"], "The first document now says something else.", texts[1:])
    else:
        shutil.copytree(tiny_chain, artifacts)
        code, err = run(producer, artifacts, force=True, **VARIED.get(producer, {}))
        assert code == 0, err[-3000:]
    before = manifests(artifacts)
    code, err = run(stage, artifacts, **extra)
    outcome(stage, artifacts, before, code, err, extra)
    if producer == "DATASET" and (artifacts / "data/train").exists():  # trained again on the new documents
        assert load_from_disk(str(artifacts / "data/train"))["text"][0] == "The first document now says something else."
