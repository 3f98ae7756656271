"""The pre-flight plan: each stage's peak memory and published sizes, estimated from the model's
shape (its config, on the meta device: no weight is read) and the corpus's, before anything loads.

Memory is counted in float32 tensors, what each stage holds at its peak:
- train: weights, gradients and AdamW's two moments (16 bytes a parameter), and one micro-batch's
  activations (Shape.activations_per_token floats a token);
- fit_factors: the weights, a batch's activations, the covariance matrices of every tracked module
  (activation a x a, gradient g x g, with a the inputs plus one for a bias), their eigenvectors
  and the lambda matrices (g x a), and the per-example gradients of one module (batch x g x a,
  three copies while they are rotated into the eigenbasis);
- compute_scores: the weights, a batch's activations and the inputs Kronfluence caches for every
  tracked module, the factors, the prompts' preconditioned gradients (full: g x a each; with
  QUERY_GRADIENT_RANK r: r x (g + a)), one module's per-example gradients, and the score matrix;
- compute_self_scores: as compute_scores without prompts;
- inspect_scores: as compute_scores, on the examples the report shows (per-token scores);
- inspect_factors: the factors;
- ensemble (only with ENSEMBLE_SEEDS above 1): train's or fit_factors', whichever is larger, as each
  member is trained and then fitted, one after another;
- build_index and query: see index_estimates.
A stage's row also says how many times it does its work ("runs": the ensemble trains and fits
ENSEMBLE_SEEDS - 1 members, compute_scores scores the model and each member), one after another at
that peak: its time is that many times one model's.
On a CPU the figure is the process's peak resident memory, so it adds what the interpreter and its
libraries take (PROCESS_BASELINE); on a GPU it is the device memory torch allocates, plus the CUDA
context (CUDA_CONTEXT) where it is compared with the device's memory.

Local disk ("disk_bytes", see disk_estimates) is what a stage holds in its work folder (TMPDIR) and,
for the query, CACHE_DIR at its peak: the inputs it fetches (their sizes as their _SUCCESS records
them where they are published, else estimated as the published rows are) and what it writes before
publishing. It is compared with DISK_GIB, default the free space of the temporary folder (plus what
the query's inputs already hold in CACHE_DIR).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from influence_core.artifacts import Artifact, Factors, Index, Model, Scores, SelfScores, TrainData, find, in_member
from influence_core.demo_corpus import CORPORA
from influence_core.errors import ConfigError
from influence_core.settings import CommonSettings, PlanSettings
from influence_core.storage import Store, read_uri

log = logging.getLogger(__name__)
FLOAT = 4  # bytes of a float32
GIB = 2**30
# The interpreter with torch, transformers, datasets and kronfluence imported, and the allocator's
# slack around it, as peak RSS on a CPU (docs/results/cost_curve.md measures the plan against it).
PROCESS_BASELINE = 500 * 2**20
CUDA_CONTEXT = GIB // 2  # what the CUDA runtime takes on the device before the first tensor
# Freed blocks are not all reusable for the next, differently shaped tensors (glibc on CPU, torch's
# caching allocator on GPU): the peak exceeds the live tensors. 1.2 is the middle of what the CPU
# measurements in docs/results/cost_curve.md show (their Kronfluence stages exceed the live tensors by 10-30%).
FRAGMENTATION = 1.2
# What a published directory holds besides its tensors: the _SUCCESS manifest (settings, checksums)
# and Kronfluence's argument and metadata files; scores also the prompts scored.
METADATA_BYTES = 3500
PROMPT_BYTES = 100
TOKENIZER_BYTES_PER_TOKEN = 60  # tokenizer.json: a vocabulary entry and a merge rule per token
# The index: a shard file's safetensors header and its line in _SUCCESS; a module's entry in
# projection.json; an example's index in rescored.json; the rows query multiplies at a time
# (influence_core.index.score_shards).
SHARD_HEADER_BYTES = 250
MODULE_PROJECTION_BYTES = 120
RESCORED_BYTES = 5
QUERY_BLOCK = 256
QUERY_METADATA_BYTES = 2600  # a query's _SUCCESS and score_arguments.json: no Kronfluence metadata files
INDEX_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}  # a stored float of each INDEX_DTYPE
# Local disk. data/train before it is published, a token: its input_ids (int32) and attention mask
# (int8), the documents' text (whole, not cut at MAX_LENGTH) and the BM25 index beside it, rounded up.
DATA_BYTES_PER_TOKEN = 24
# train keeps its last checkpoint (save_total_limit=1) while it writes the next: two at its peak,
# each the weights and AdamW's two moments.
CHECKPOINTS_HELD = 2


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know of the model and the corpus."""

    parameters: int
    vocab: int
    hidden: int
    layers: int
    heads: int
    tracked: tuple[tuple[int, int], ...]  # (inputs incl. a bias column, outputs) of each module fit_factors tracks
    scored: tuple[tuple[int, int], ...]  # the same of the modules the scoring stages track: the factors' own
    scoring_strategy: str  # the factors' strategy (FACTOR_STRATEGY until they are fitted)
    examples: int
    longest: int  # tokens of the longest training example: batches sorted by length peak there
    tokens: int  # tokens of all training examples
    prompts: int
    from_published: bool  # the model and data are published (else: from the settings, upper bounds)
    # The published index INDEX_NAME of the model: its floats per example and INDEX_DTYPE, as it was
    # built (a query has no INDEX_DIM or INDEX_DTYPE of its own); None when none is published.
    index: tuple[int, str] | None = None
    imported: bool = False  # the published model is MODEL as it is (import_model): it has no ensemble
    # Bytes of the published inputs the stage runs on ("model", "data", "factors", "index", and
    # "index_file": the index's largest file), as their _SUCCESS records them; an absent key: not
    # published (estimated). `cached`: how many of those bytes CACHE_DIR holds already (a query
    # reads them from there).
    sizes: dict[str, int] = field(default_factory=dict)
    cached: int = 0

    def activations_per_token(self, intermediate: int) -> int:
        """Floats a token keeps for the backward pass: per block its hidden states (about ten of
        them: norms, queries, keys, values, attention output, residuals), the MLP's two
        intermediate tensors, and the attention weights before and after softmax; then the
        logits, their float copy, log-softmax and gradient."""
        return self.layers * (10 * self.hidden + 2 * intermediate + 2 * self.heads * self.longest) + 4 * self.vocab


# The train settings that shape the model and the corpus: a published model made with other values
# is not what training with these settings would make.
SHAPING = ("model", "model_preset", "max_length", "vocab_size", "tokenizer_name", "dataset", "dataset_config",
           "dataset_split", "text_column", "num_examples", "seed")


def published_model(settings: PlanSettings, store: Store, stage: str) -> Model | None:
    """The published model the estimate is of: the one a stage after train runs on, or, for train,
    the one these settings would train (None when they would train another)."""
    model = find(store, Model())
    if model is None or stage != "train":
        return model
    trained = model.settings
    return model if all(getattr(trained, key) == getattr(settings, key) for key in SHAPING) else None


def _write_config(settings: PlanSettings, model: Model | None, scratch: Path) -> None:
    """The model's config.json, written to `scratch`: the published model's, MODEL's, or the
    preset's at VOCAB_SIZE."""
    from influence_core.modeling import preset_config

    if model is not None:
        (scratch / Model.CONFIG).write_text(json.dumps(model.config()))
    elif settings.model:
        source = settings.model.rstrip("/")
        if "://" not in source and not Path(source).exists():  # a Hugging Face name: the plan makes no network call
            raise ConfigError(f"plan: MODEL={source} is a Hugging Face name; publish it first (import_model or "
                              "train), then the plan reads its config from the artifacts")
        (scratch / Model.CONFIG).write_bytes(read_uri(f"{source}/{Model.CONFIG}", "MODEL"))
    else:
        preset_config(settings.model_preset, settings.vocab_size, settings.max_length, bos_token_id=0,
                      eos_token_id=0).save_pretrained(scratch)


def _corpus(settings: PlanSettings, data: TrainData | None, scratch: Path) -> tuple[int, int, int]:
    """Examples, the longest one's tokens and all tokens: of the published data, else upper bounds."""
    from influence_core.data import DEFAULT_DEMO_DOCUMENTS, DEFAULT_HUB_DOCUMENTS

    if data is not None:
        from datasets import load_from_disk

        local = data.fetch(scratch / data.relative, cache=settings.cache)  # CACHE_DIR's copy, verified once
        lengths = [len(ids) for ids in load_from_disk(str(local))["input_ids"]]
        return len(lengths), max(lengths), sum(lengths)
    default = DEFAULT_DEMO_DOCUMENTS if settings.dataset in CORPORA else DEFAULT_HUB_DOCUMENTS
    examples = settings.num_examples or default
    return examples, settings.max_length, examples * settings.max_length


def measure_shape(settings: PlanSettings, prompts: int, stage: str = "fit_factors") -> Shape:
    """The model's and the corpus's shape for these settings and one stage,
    read from the published model and data when they are what the stage runs on (their config and
    token counts), else from the settings; the tracked modules and strategy of scoring from the
    published factors FACTORS_NAME of that model, else from the settings; the rows a query reads from
    the published index INDEX_NAME of that model."""
    from influence_core.modeling import skeleton, tracked_names_in

    store = Store(settings.artifacts_uri)
    model = published_model(settings, store, stage)
    data = find(store, TrainData()) if model is not None else None
    factors = find(store, Factors(settings.factors_name), (model,)) if model is not None else None
    index = find(store, Index(settings.index_name), (model,)) if model is not None else None
    with tempfile.TemporaryDirectory(prefix="plan-") as scratch:
        _write_config(settings, model, Path(scratch))
        skeleton_model = skeleton(scratch)  # on the meta device, as analysed (GPT-2's Conv1D as Linear)
        examples, longest, tokens = _corpus(settings, data, Path(scratch))
    modules = dict(skeleton_model.named_modules())

    def sizes(names: list[str]) -> tuple[tuple[int, int], ...]:
        return tuple((modules[name].in_features + (modules[name].bias is not None), modules[name].out_features)
                     for name in names)

    tracked = sizes(tracked_names_in(skeleton_model, settings.tracked_modules))
    scored = sizes(factors.tracked_modules()) if factors is not None else tracked
    index_row = None
    if index is not None:
        built = index.settings  # BuildIndexSettings as recorded: its INDEX_DIM and INDEX_DTYPE
        # build_index records its rows' size; recomputed from INDEX_DIM for an index that did not
        index_row = (index.manifest.extra("floats_per_example") or index_row_floats(scored, built.index_dim),
                     built.index_dtype)
    parameters = sum(parameter.numel() for parameter in skeleton_model.parameters())  # tied weights once
    config = skeleton_model.config
    return Shape(parameters=parameters, vocab=config.vocab_size, hidden=config.hidden_size,
                 layers=config.num_hidden_layers, heads=config.num_attention_heads, tracked=tracked, scored=scored,
                 scoring_strategy=factors.strategy if factors is not None else settings.factor_strategy,
                 examples=examples, longest=longest, tokens=tokens, prompts=prompts,
                 from_published=model is not None and data is not None,
                 index=index_row, imported=model is not None and model.family == "imported",
                 **_published_sizes(settings, {"model": model, "data": data, "factors": factors, "index": index}))


def _published_sizes(settings: PlanSettings, found: dict[str, Artifact | None]) -> dict:
    """Shape's `sizes` of the published artifacts `found`, and `cached`: how much of them CACHE_DIR
    holds already, each file where Store.fetch_cached keeps it, of its recorded size."""
    from influence_core.storage import cache_entry

    sizes, cached, cache = {}, 0, settings.cache
    for key, artifact in found.items():
        files = artifact.manifest.files if artifact is not None else None
        if files is None:
            continue
        sizes[key] = sum(size for size, _ in files.values())
        if key == "index" and files:  # the query's download at a time without CACHE_DIR: its largest file
            sizes["index_file"] = max(size for size, _ in files.values())
        entry = cache_entry(cache, artifact.relative, files) if cache is not None else None
        cached += sum(size for name, (size, _) in files.items()
                      if entry is not None and (entry / name).is_file() and (entry / name).stat().st_size == size)
    return {"sizes": sizes, "cached": cached}


def _intermediate(shape: Shape) -> int:
    return max((outputs for inputs, outputs in shape.tracked if outputs > shape.hidden), default=4 * shape.hidden)


@dataclass(frozen=True)
class Estimate:
    fixed: int  # bytes held whatever the batch size
    per_example: int  # bytes each example of a batch adds
    batch_setting: str | None  # the setting that sizes the batch
    batch: int
    published: dict[str, int]  # artifact path -> bytes
    runs: int = 1  # times the stage does this work, one after another (models trained, fitted or scored)
    facts: dict[str, int] | None = None  # more of the stage's figures, keys of its row (bytes_per_example)

    def peak(self, batch: int | None = None) -> int:
        return self.fixed + self.per_example * (self.batch if batch is None else batch)


@dataclass(frozen=True)
class Modules:
    """The float32 bytes of what a stage holds for a set of tracked modules."""

    covariances: int  # activation a x a and gradient g x g of each (a: inputs plus one for a bias)
    gradient: int  # one example's gradient over all of them (g x a each)
    largest: int  # one example's gradient of the largest one
    cached_inputs: int  # the inputs Kronfluence caches for each, per example at the longest length
    factors: int  # the factors of a strategy over them

    @classmethod
    def of(cls, modules: tuple[tuple[int, int], ...], strategy: str, longest: int) -> Modules:
        if not modules:
            raise ConfigError("plan: no module of the model to track; set TRACKED_MODULES")
        covariances = sum(inputs * inputs + outputs * outputs for inputs, outputs in modules) * FLOAT
        gradient = sum(inputs * outputs for inputs, outputs in modules) * FLOAT
        factors = {"identity": 0, "diagonal": gradient, "kfac": 2 * covariances,
                   "ekfac": 2 * covariances + gradient}[strategy]
        return cls(covariances, gradient, max(inputs * outputs for inputs, outputs in modules) * FLOAT,
                   sum(inputs for inputs, _ in modules) * FLOAT * longest, factors)


def estimates(settings: PlanSettings, shape: Shape) -> dict[str, Estimate]:
    """Each stage's memory (fixed and per example of a batch) and published sizes, in bytes:
    fit_factors for FACTOR_STRATEGY and TRACKED_MODULES, the stages after it for the factors'
    own strategy and modules, scoring one query batch (QUERY_BATCH_SIZE prompts) at a time; the
    ensemble's members (ENSEMBLE_SEEDS) as the model: trained, fitted and scored as it is."""
    weights = shape.parameters * FLOAT
    token_activations = shape.activations_per_token(_intermediate(shape)) * FLOAT * shape.longest
    fitted = Modules.of(shape.tracked, settings.factor_strategy, shape.longest)
    scored = Modules.of(shape.scored, shape.scoring_strategy, shape.longest)
    # The eigendecomposition holds one module's covariance and eigenvectors in float64 at a time.
    eigen = 4 * max(inputs * inputs + outputs * outputs for inputs, outputs in shape.tracked) * FLOAT
    rank = settings.query_gradient_rank
    batch = min(settings.query_batch_size or shape.prompts, shape.prompts)  # Kronfluence's query batch
    query = (batch * sum(rank * (inputs + outputs) if rank and rank < min(inputs, outputs)
                         else inputs * outputs for inputs, outputs in shape.scored) * FLOAT)
    query_peak = query + batch * scored.gradient  # the full gradients, before the low-rank step
    scores = shape.prompts * shape.examples * FLOAT  # every query batch's scores, gathered
    scoring_fixed = weights + scored.factors + max(query_peak, query + 2 * scores)
    scoring_per_example = token_activations + scored.cached_inputs + 2 * scored.largest
    shown = 2 * settings.num_influential * shape.prompts  # examples inspect_scores scores per token
    model_files = weights + TOKENIZER_BYTES_PER_TOKEN * shape.vocab + METADATA_BYTES
    factors_files = fitted.factors + METADATA_BYTES
    scores_files = scores + METADATA_BYTES + PROMPT_BYTES * shape.prompts
    # The ensemble's, besides the model itself; an imported model is scored alone (no training to repeat).
    members = range(1, 1 if shape.imported else settings.ensemble_seeds)
    # One micro-batch (BATCH_SIZE / MICRO_BATCHES examples) is in memory at a time.
    train = Estimate(4 * weights, token_activations // settings.micro_batches, "BATCH_SIZE", settings.batch_size,
                     {Model().relative: model_files})
    fit_factors = Estimate(weights + fitted.factors + eigen, token_activations + 3 * fitted.largest,
                           "FACTOR_BATCH_SIZE", settings.factor_batch_size,
                           {Factors(settings.factors_name).relative: factors_files})
    # Each member is trained, then fitted, in turn: the larger of the two peaks is the stage's. The
    # members repeat the model's and its factors' recorded settings; the rows are of these settings,
    # exact when they are those.
    # A member publishes what train and fit_factors do, in its own tree (its data/train as well, which
    # the plan does not size, as it does not the model's). Without members (ENSEMBLE_SEEDS=1) the
    # stage loads no model and publishes nothing: no row, rather than a peak for work that does not happen.
    repeated = max(train, fit_factors, key=Estimate.peak)
    ensemble = {"ensemble": Estimate(
        repeated.fixed, repeated.per_example, repeated.batch_setting, repeated.batch,
        {in_member(artifact, number).relative: size for number in members
         for artifact, size in ((Model(), model_files), (Factors(settings.factors_name), factors_files))},
        runs=len(members))} if members else {}
    return {
        "train": train,
        "fit_factors": fit_factors,
        "inspect_factors": Estimate(2 * scored.factors, 0, None, 0, {}),
        **ensemble,
        # The model and each member are scored one after another. With SCORE_FUSION, BM25's matrix and
        # the fused one are published beside the (mean) influence; a member's scores are its influence
        # alone (the fusion is of the mean).
        "compute_scores": Estimate(scoring_fixed, scoring_per_example, "TRAIN_BATCH_SIZE", settings.train_batch_size,
                                   {Scores(settings.scores_name).relative:
                                    scores_files + (0 if settings.score_fusion == "none" else 2 * scores),
                                    **{in_member(Scores(settings.scores_name), number).relative: scores_files
                                       for number in members}},
                                   runs=1 + len(members)),
        "compute_self_scores": Estimate(weights + scored.factors,
                                        token_activations + scored.cached_inputs + 3 * scored.largest,
                                        "TRAIN_BATCH_SIZE", settings.train_batch_size,
                                        {SelfScores(settings.factors_name).relative:
                                         shape.examples * FLOAT + METADATA_BYTES}),
        # Per-token scores of the examples the report shows: compute_scores again, on those examples.
        "inspect_scores": Estimate(scoring_fixed, scoring_per_example, None,
                                   min(settings.train_batch_size, shown), {}),
        **index_estimates(settings, shape, weights, token_activations, scored, scoring_per_example),
    }


def index_row_floats(modules: tuple[tuple[int, int], ...], index_dim: int) -> int:
    """Numbers an index stores per training example: the modules' (inputs, outputs) projected within
    INDEX_DIM (0: kept whole) by the rule influence_core.index.Projection.plan applies."""
    from influence_core.index import shares

    return sum(out_dim * in_dim for out_dim, in_dim in shares([(outputs, inputs) for inputs, outputs in modules],
                                                              index_dim))


def search_bytes(settings: PlanSettings, row: int, stored: int, examples: int,
                 numbers: Iterable[int] | None = None) -> int:
    """The search structures build_index keeps beside the shards of rows of `row` numbers, `stored`
    bytes each, by INDEX_SEARCH (none for an exact index): each shard's codes, its trained
    parameters and faiss' header; of the shards `numbers` (default all)."""
    from influence_core.search import resolve, structure_bytes

    search = resolve(settings.index_search, examples, row * stored)
    size = settings.index_shard_size
    numbers = range(Index.shard_count(examples, size)) if numbers is None else numbers
    return 0 if search is None else sum(structure_bytes(search, row, min(size, examples - number * size))
                                        for number in numbers)


def index_bytes(settings: PlanSettings, shape: Shape, numbers: Iterable[int]) -> int:
    """The files of the index these settings build that hold the shards `numbers` (each its rows,
    safetensors header and search structure), and projection.json: the index published, with every
    shard; a build_index pod's own, with SHARD_INDEX's."""
    row = index_row_floats(shape.scored, settings.index_dim)
    stored = INDEX_DTYPE_BYTES[settings.index_dtype]
    size = settings.index_shard_size
    numbers = list(numbers)
    return (sum(min(size, shape.examples - number * size) for number in numbers) * row * stored
            + len(numbers) * SHARD_HEADER_BYTES + METADATA_BYTES + MODULE_PROJECTION_BYTES * len(shape.scored)
            + search_bytes(settings, row, stored, shape.examples, numbers))


def index_estimates(settings: PlanSettings, shape: Shape, weights: int, token_activations: int,
                    scored: Modules, scoring_per_example: int) -> dict[str, Estimate]:
    """build_index: the weights, the whitening (the factors), the shard being built (INDEX_SHARD_SIZE
    rows in INDEX_DTYPE) and, per example of a batch, its activations, one module's rotated gradient
    with its scaled and projected copies, and its row in float32. query: the weights, the whitening,
    the prompts' rows, a block of index rows in float32 and the scores; rescoring the candidates
    is compute_scores on them. build_index makes the rows of these settings (INDEX_DIM,
    INDEX_DTYPE); query reads those of the published index, as it was built (these settings' before
    it is)."""
    row = index_row_floats(shape.scored, settings.index_dim)
    stored = INDEX_DTYPE_BYTES[settings.index_dtype]
    queried, queried_dtype = shape.index or (row, settings.index_dtype)
    queried_stored = INDEX_DTYPE_BYTES[queried_dtype]
    shard = min(settings.index_shard_size, shape.examples)
    shards = Index.shard_count(shape.examples, settings.index_shard_size)
    published = index_bytes(settings, shape, range(shards))
    queries = shape.prompts * queried * FLOAT
    scores = shape.prompts * shape.examples * FLOAT
    rescored = min(shape.examples, shape.prompts * settings.rerank_top_k)
    return {
        "build_index": Estimate(weights + scored.factors + shard * row * stored,
                                token_activations + 3 * scored.largest + row * FLOAT, "TRAIN_BATCH_SIZE",
                                settings.train_batch_size,
                                {Index(settings.index_name).relative: published},
                                facts={"bytes_per_example": row * stored}),
        "query": Estimate(weights + scored.factors + queries + QUERY_BLOCK * queried * (FLOAT + queried_stored)
                          + 2 * scores,
                          scoring_per_example if rescored else 0, "TRAIN_BATCH_SIZE" if rescored else None,
                          settings.train_batch_size,
                          {Scores("query_scores").relative: scores + QUERY_METADATA_BYTES
                           + PROMPT_BYTES * shape.prompts + RESCORED_BYTES * rescored}),
    }


def disk_estimates(settings: PlanSettings, shape: Shape, rows: dict[str, Estimate]) -> dict[str, int]:
    """Each stage's local disk at its peak, in bytes: the inputs it fetches into its work folder
    (the query: into CACHE_DIR), each as its _SUCCESS records it where it is published, else
    estimated (the model and factors as their published rows, the data DATA_BYTES_PER_TOKEN a
    token), and what it writes there before publishing (its published sizes):
    - train: the data and model it publishes, CHECKPOINTS_HELD checkpoints, and MODEL's weights;
    - fit_factors: the model, the data and the factors, with data partitions each partition's
      covariance and lambda files too (Kronfluence keeps them beside the sums, and they are
      published: the stages after it fetch them);
    - inspect_factors: the factors;
    - ensemble: train's or fit_factors', whichever is larger (a member's stages work in turn, each
      in a folder of its own);
    - compute_scores: the model, the data, the factors and the scores (the members' as well, averaged
      here; with data partitions each partition's besides); compute_self_scores likewise;
    - inspect_scores: the model, the data, the factors (each member's too) and the scores;
    - build_index: the model, the data, the factors and the index's shards: with SHARD_INDEX the
      pod's own alone (SHARD_INDEX, + INDEX_PARTITIONS, ...), else every one (it publishes them);
    - query: the model, the data, the factors and the whole index, kept in CACHE_DIR (with
      CACHE_DIR=off, a shard at a time), and the scores.
    `rows`: the stages' estimates for these settings and shape (`estimates`)."""
    published = {stage: sum(row.published.values()) for stage, row in rows.items()}
    weights = shape.parameters * FLOAT
    model = shape.sizes.get("model", rows["train"].published[Model().relative])
    data = shape.sizes.get("data", DATA_BYTES_PER_TOKEN * shape.tokens + METADATA_BYTES)
    fitted = Modules.of(shape.tracked, settings.factor_strategy, shape.longest)
    covariances = fitted.covariances if settings.factor_strategy in ("kfac", "ekfac") else 0
    lambdas = fitted.gradient if settings.factor_strategy in ("ekfac", "diagonal") else 0
    # Kronfluence keeps each data partition's sums beside their total, and they are published with it.
    fitted_files = (published["fit_factors"]
                    + (settings.covariance_data_partitions * covariances if settings.covariance_data_partitions > 1
                       else 0)
                    + (settings.lambda_data_partitions * lambdas if settings.lambda_data_partitions > 1 else 0))
    factors = shape.sizes.get("factors", fitted_files)
    inputs = model + data + factors
    scores = shape.prompts * shape.examples * FLOAT
    members = 0 if shape.imported else settings.ensemble_seeds - 1
    shards = Index.shard_count(shape.examples, settings.index_shard_size)
    own = range(shards) if settings.shard is None else range(settings.shard, shards, settings.index_partitions)
    queried, queried_dtype = shape.index or (index_row_floats(shape.scored, settings.index_dim), settings.index_dtype)
    one_shard = min(settings.index_shard_size, shape.examples) * queried * INDEX_DTYPE_BYTES[queried_dtype]
    disk = {
        "train": data + published["train"] + CHECKPOINTS_HELD * 3 * weights + (weights if settings.model else 0),
        "fit_factors": model + data + fitted_files,
        "inspect_factors": factors,
        "compute_scores": inputs + published["compute_scores"] + (scores if settings.score_data_partitions > 1 else 0),
        "compute_self_scores": inputs + published["compute_self_scores"],
        "inspect_scores": inputs + members * (model + factors) + published["compute_scores"]
        + published["compute_self_scores"],
        "build_index": inputs + index_bytes(settings, shape, own),
        "query": inputs + (shape.sizes.get("index", published["build_index"]) if settings.cache is not None
                           else shape.sizes.get("index_file", one_shard + SHARD_HEADER_BYTES)) + published["query"],
    }
    if "ensemble" in rows:
        disk["ensemble"] = max(disk["train"], disk["fit_factors"])
    return disk


def disk_space() -> tuple[str, int]:
    """The folder the stages work in (the temporary folder, TMPDIR) and its free space."""
    folder = tempfile.gettempdir()
    return folder, shutil.disk_usage(folder).free


def device_memory() -> tuple[str, int]:
    """The device the stages would run on and its memory: the GPU's, else the container's memory
    limit (cgroup), else the machine's."""
    import torch

    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(torch.cuda.current_device())
        return properties.name, properties.total_memory
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text().split()[0])
        except (OSError, ValueError):  # absent, or "max": no limit
            continue
        if limit < 2**60:
            return "cpu (container limit)", limit
    return "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def make_plan(settings: PlanSettings, prompts: int, stage: str | None = None) -> dict:
    """The plan (docs/artifacts.md, "plan"): per stage the estimated peak memory, whether it fits
    the device (DEVICE_MEMORY_GIB, default the detected one), the largest batch that fits, the
    published sizes, and the local disk it needs and whether that fits DISK_GIB (default the
    temporary folder's free space, plus what the query's inputs already hold in CACHE_DIR); for
    one `stage`, of the model and data it runs on."""
    import torch

    # train is judged on what these settings would train; the stages after it on what they run on.
    shape = measure_shape(settings, prompts, stage if stage is not None else "fit_factors")
    trained = measure_shape(settings, prompts, "train") if stage in (None, "train") else shape
    shaped = estimates(settings, shape)
    for_training = shaped if trained is shape else estimates(settings, trained)
    rows = {**shaped, "train": for_training["train"]}
    disk = {**disk_estimates(settings, shape, shaped),
            "train": disk_estimates(settings, trained, for_training)["train"]}
    folder, free = disk_space()
    disk_room = int(settings.disk_gib * GIB) if settings.disk_gib else free
    name, detected = device_memory()
    available = int(settings.device_memory_gib * GIB) if settings.device_memory_gib else detected
    gpu = torch.cuda.is_available()
    overhead = CUDA_CONTEXT if gpu else PROCESS_BASELINE
    stages = {}
    for stage, estimate in rows.items():
        peak = int(FRAGMENTATION * estimate.peak())
        room = int((available - overhead) / FRAGMENTATION) - estimate.fixed
        largest = (room // estimate.per_example if estimate.per_example else None) if room > 0 else 0
        stages[stage] = {
            "peak_memory_bytes": peak + (0 if gpu else PROCESS_BASELINE),
            "fits": peak + overhead <= available,
            "batch_setting": estimate.batch_setting,
            "batch_size": estimate.batch if estimate.batch_setting else None,
            "largest_batch_size_that_fits": largest if estimate.batch_setting else None,
            "published_bytes": estimate.published,
            "runs": estimate.runs,
            **(estimate.facts or {}),
            "disk_bytes": disk[stage],
            # DISK_GIB is all the disk there is; the free space detected is besides what is there already.
            "fits_disk": disk[stage] - (0 if settings.disk_gib or stage != "query" else shape.cached) <= disk_room,
        }
    return {
        "device": {"name": name, "memory_bytes": available, "detected_memory_bytes": detected,
                   "estimate_of": "device memory torch allocates" if gpu else "peak resident memory of the process",
                   "disk_bytes": disk_room, "detected_disk_bytes": free, "disk_folder": folder},
        "shape": {"parameters": shape.parameters, "tracked_modules": len(shape.tracked), "examples": shape.examples,
                  "longest_example_tokens": shape.longest, "prompts": shape.prompts,
                  "from": "the published model and data" if shape.from_published else
                          "the settings (the model and data are not published yet: lengths are MAX_LENGTH)",
                  "train_from": "the published model and data" if trained.from_published else
                                "the settings (they would train another model: lengths are MAX_LENGTH)"},
        "stages": stages,
    }


def render(plan: dict) -> str:
    device, shape = plan["device"], plan["shape"]
    lines = [f"Plan for {device['name']}, {device['memory_bytes'] / GIB:.1f} GiB ({device['estimate_of']}); "
             f"{shape['parameters']:,} parameters, {shape['tracked_modules']} tracked modules, {shape['examples']:,} "
             f"examples (longest {shape['longest_example_tokens']} tokens), {shape['prompts']} prompts, from "
             f"{shape['from']}; train from {shape['train_from']}; local disk {device['disk_bytes'] / GIB:.1f} GiB "
             f"({'DISK_GIB' if device['disk_bytes'] != device['detected_disk_bytes'] else 'free'} in "
             f"{device['disk_folder']})", "",
             f"{'stage':<20} {'runs':>4} {'peak GiB':>9}  {'fits':<4}  {'batch':<26} {'largest that fits':>17}  "
             f"{'disk GiB':>8}  {'fits':<4}  published",
             ]
    for stage, row in plan["stages"].items():
        batch = f"{row['batch_setting']}={row['batch_size']}" if row["batch_setting"] else "-"
        largest = "-" if row["largest_batch_size_that_fits"] is None else f"{row['largest_batch_size_that_fits']:,}"
        published = ", ".join(f"{path} {size / 2**20:,.1f} MiB" for path, size in row["published_bytes"].items())
        lines.append(f"{stage:<20} {row['runs']:>4} {row['peak_memory_bytes'] / GIB:>9.2f}  "
                     f"{'yes' if row['fits'] else 'NO':<4}  {batch:<26} {largest:>17}  "
                     f"{row['disk_bytes'] / GIB:>8.2f}  {'yes' if row['fits_disk'] else 'NO':<4}  {published or '-'}")
    return "\n".join(lines)


# What check_disk suggests, besides more disk, to a stage whose disk does not fit.
DISK_REMEDIES = {"build_index": "spread the shards over more pods (INDEX_PARTITIONS; a pod with SHARD_INDEX holds "
                                "its own alone), or ",
                 "query": "CACHE_DIR=off holds the index a shard at a time, or "}


def check_disk(stage: str, row: dict, device: dict, settings: PlanSettings) -> None:
    """check_fits' refusal, in one line, of a stage whose plan `row` says its local disk does not fit."""
    if row["fits_disk"]:
        return
    room = "DISK_GIB gives" if settings.disk_gib else f"free in {device['disk_folder']} (DISK_GIB sets it)"
    raise ConfigError(
        f"{stage}: needs about {row['disk_bytes'] / GIB:.2f} GiB of local disk (the inputs it fetches and what it "
        f"writes), more than the {device['disk_bytes'] / GIB:.2f} GiB {room}; {DISK_REMEDIES.get(stage, '')}give "
        "it more disk (in Kubernetes a larger emptyDir sizeLimit on /tmp and /cache, and DISK_GIB to match); "
        "`python -m jobs plan` shows every stage; FORCE_FIT=true starts it anyway")


def check_fits(stage: str, settings: CommonSettings, prompts: int = 1) -> None:
    """Refuse, in one line and before the model loads, a stage whose batch size the plan says
    cannot fit the device, or whose inputs and outputs cannot fit its local disk (DISK_GIB; a
    build_index pod's SHARD_INDEX counts its own shards alone); FORCE_FIT=true starts it anyway. The
    plan only advises: when it cannot be made (a model it cannot read, no module to track), the
    stage goes on and its own checks speak."""
    if settings.force_fit:
        return
    # The stage's settings, the other stages' at their defaults (no environment: a shard index set
    # for this stage would not fit the others' partition counts). A build_index pod's shard stays:
    # its disk holds its own shards alone.
    known = {key: value for key, value in settings.model_dump().items() if key in PlanSettings.model_fields}
    shard = getattr(settings, "shard", None) if stage == "build_index" else None
    wide = PlanSettings.model_construct(**{**known, "shard_index": shard, "job_completion_index": None})
    try:
        plan = make_plan(wide, prompts, stage)
    except Exception as error:  # noqa: BLE001 (advice only; the reason is logged)
        log.debug("no memory plan for %s (%s); starting without the check", stage, str(error)[:200] or error)
        return
    row = plan["stages"].get(stage)
    if row is None:  # no row: nothing to run (the ensemble with ENSEMBLE_SEEDS=1)
        return
    if row["fits"]:
        check_disk(stage, row, plan["device"], wide)
        return
    largest = row["largest_batch_size_that_fits"]
    fitting = f"the largest that fits is {largest}" if largest else "no batch size fits"
    raise ConfigError(
        f"{stage}: {row['batch_setting']}={row['batch_size']} needs about {row['peak_memory_bytes'] / GIB:.1f} GiB, "
        f"more than the {plan['device']['memory_bytes'] / GIB:.1f} GiB of {plan['device']['name']} "
        f"(DEVICE_MEMORY_GIB sets it); {fitting}; `python -m jobs plan` shows every stage; FORCE_FIT=true starts "
        "it anyway")
