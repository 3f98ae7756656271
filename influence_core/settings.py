"""All settings, one typed place. Environment variables first (what Job manifests set), and the
same fields as CLI flags with the original scripts' names (`--factors_name`, `--layer_num`, ...).

Field names are the flag names; upper-cased they are the environment variable names (no prefix).
Validation happens here, before any model loads: a bad value is one line and exit code 2.

Settings are grouped by what they configure (the corpus, the model, an Indexed Job's index, the
factors, the prompts, the scoring, ...); a stage's class combines the groups it reads. Every field
has a description, which `python -m jobs <stage> --help` prints.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from influence_core.demo_corpus import CORPORA, minimum_documents
from influence_core.errors import ConfigError

SHIPPED_PROMPTS = str(Path(__file__).resolve().parent.parent / "prompts.json")
STRATEGIES = ("identity", "diagonal", "kfac", "ekfac")
STRATEGY_ALIASES = {"diagfisher": "diagonal"}  # the original README's name for the diagonal Fisher

# Names that become directory names in the artifacts: no separators, no "..", not absolute.
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
Strategy = Annotated[
    Literal["identity", "diagonal", "kfac", "ekfac"],
    BeforeValidator(lambda value: STRATEGY_ALIASES.get(value, value)),
]
Dtype = Literal["float32", "float64", "bfloat16", "float16"]
# The damping added to the curvature before it is inverted. 1e-8 is the default of Kronfluence's
# ScoreArguments; "heuristic" is what Kronfluence adds when the damping is None, 0.1 x each module's
# mean eigenvalue, which predicted retraining worse on the demo (docs/guides/lds.md, "The defaults, chosen by LDS").
DEFAULT_DAMPING = 1e-8
Damping = Annotated[
    PositiveFloat | Literal["heuristic"],
    Field(description="Damping added to the curvature before it is inverted: a number, or 'heuristic' (0.1 x "
                      "each module's mean eigenvalue); inspect_factors conditions its summary with it"),
]


def kronfluence_damping(damping: float | str) -> float | None:
    """Kronfluence's damping_factor: None means its heuristic."""
    return None if damping == "heuristic" else float(damping)


def _regular_expression(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression ({error})") from None
    return value


# Settings that several groups below share (as Damping is), each described once.
FactorsName = Annotated[Name, Field(
    description="Name of the factors: fit_factors writes influence/factors_<name>/, the stages after it read them")]
ScoresName = Annotated[Name, Field(
    description="Name of the scores: compute_scores writes influence/scores_<name>/, inspect_scores reports them "
                "in reports/<name>/")]
# One model: the original project's five commands run as they are, and new prompts need compute_scores
# alone. Three models predicted retraining better on all three corpora of docs/results/lds_corpora.md, at
# three trainings' cost: the report suggests it (ENSEMBLE_SUGGESTED).
DEFAULT_ENSEMBLE_SEEDS = 1
# 32 KiB an example in float16: the largest of docs/results/index_budget.md's budgets within the tiny
# model's 32 KiB, and the best of them on every corpus there (none held 9.5 of jargon's top 10).
INDEX_DIM_DEFAULT = 16384
# INDEX_SEARCH=auto: the exact scan below this many bytes of rows (32,768 examples of the default 32 KiB,
# 1-4 s a query at the 0.3-0.9 GB/s the scan read on one core of a loaded 2-core machine), SEARCH_AUTO
# from there: 2-bit RaBitQ searched 1,000,000 rows in 5-8 s there and held every exact top 10 of the
# demo's 12 prompts within its best 102 of 2,400; 4-bit SQ within 15, but in 9-10 s; 1-bit RaBitQ in
# 1.3 s, within 1,913 (bench/search_recall.py, docs/guides/ask-new-questions.md).
SEARCH_AUTO_BYTES = 2 ** 30
SEARCH_AUTO = "rabitq2"
ENSEMBLE_SUGGESTED = 3
EnsembleSeeds = Annotated[int, Field(
    ge=1, le=100, description="Models whose influence compute_scores averages: the model at ARTIFACTS_URI and "
                              "ENSEMBLE_SEEDS - 1 members that the ensemble stage trains and fits like it with "
                              "training seeds +1, +2, ... (in ensemble/member_<k>/) and compute_scores scores; "
                              "1: the model alone")]
Prompts = Annotated[str, Field(description="Path or URL of the prompts file, a JSON list of {\"prompt\": ..., "
                                           "\"completion\": ...}; default the shipped prompts.json")]
FactorBatchSize = Annotated[PositiveInt, Field(description="Training examples per batch (per process) while "
                                                           "fitting the covariance and lambda matrices")]
TrainBatchSize = Annotated[PositiveInt, Field(description="Training examples per batch (per process) while "
                                                          "scoring their gradients")]


class CommonSettings(BaseSettings):
    """What every stage reads: where the artifacts are, the seed, logging, and FORCE."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        validate_default=True,
    )

    artifacts_uri: str = Field("./artifacts", description="Local path or fsspec URL (s3://, gs://) of all artifacts")
    seed: NonNegativeInt = Field(0, description="Seed of the demo corpus, the training (unless TRAINING_SEED), the "
                                                "Fisher's sampled labels and the LDS subsets")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level; DEBUG also shows the libraries' progress bars and messages")
    force: bool = Field(False, description="Redo the stage even if its outputs are complete")


# ---- the training corpus and the model ----------------------------------------------------------

class CorpusSettings(CommonSettings):
    """The training corpus: which documents, from where."""

    dataset: str = Field("demo", description="'demo' or 'demo-hard' (built in, with planted facts), a Hugging Face "
                                             "dataset name, or a path/URL of .jsonl/.json/.parquet/.txt files")
    dataset_config: str | None = Field(None, description="Configuration of a Hugging Face dataset; default its "
                                                         "default one")
    dataset_split: str = Field("train", description="Split of a Hugging Face dataset to read")
    text_column: str = Field("text", description="Column holding the document text (Hugging Face datasets, "
                                                 ".jsonl/.json/.parquet files)")
    num_examples: PositiveInt | None = Field(None, description="Documents to use, the first ones in corpus order "
                                                               "(default: demo 600, others 10,000)")

    @model_validator(mode="after")
    def _demo_corpus_holds_its_facts(self) -> CorpusSettings:
        needed = minimum_documents(self.seed, self.dataset) if self.dataset in CORPORA else 0
        if self.num_examples and self.num_examples < needed:
            raise ValueError(f"NUM_EXAMPLES: the {self.dataset} corpus needs at least {needed} documents to plant "
                             f"its facts, got {self.num_examples}")
        return self


class TrackedModulesSettings(CommonSettings):
    """The modules influence is computed over."""

    tracked_modules: Annotated[str | None, AfterValidator(_regular_expression)] = Field(
        None, description="Regular expression (re.search) over the model's Linear module names to track, e.g. "
                          "'mlp|attn'; default the MLP projections of every block (GPT-Neo, GPT-2, GPT-NeoX, "
                          "Llama, Mistral, Qwen2)")


class MemorySettings(CommonSettings):
    """The device's memory and local disk, for the check before a stage starts (not recorded: they
    change no output)."""

    device_memory_gib: PositiveFloat | None = Field(
        None, description="Memory of the device a stage runs on, GiB, for the plan (python -m jobs plan) and the "
                          "check before a stage starts; default the GPU's, else the container's limit")
    disk_gib: PositiveFloat | None = Field(
        None, description="Local disk a stage may fill, GiB: its work folder (TMPDIR) and, for the query, CACHE_DIR, "
                          "for the plan's disk_bytes and the check before a stage starts; default the free space of "
                          "the temporary folder (plus what the query's inputs hold in CACHE_DIR already). In a pod, "
                          "the emptyDirs' sizeLimit, which the free space does not show (the manifests set both)")
    force_fit: bool = Field(False, description="Start a stage even though the plan says its batch size does not fit "
                                               "the device's memory, or its inputs and outputs its local disk")


class DeviceSettings(MemorySettings):
    """The device's arithmetic and memory (training, factors, scores)."""

    amp_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Autocast dtype of the forward and backward passes: auto is bfloat16 on a GPU that "
                            "supports it (training also with TF32 matmuls), float32 elsewhere. Covariances, "
                            "eigendecompositions and scores keep their own dtypes (float32, float64)")


class ModelSettings(DeviceSettings, TrackedModulesSettings):
    """A model of your own (docs/guides/own-model.md)."""

    model: str | None = Field(None, description="A Hugging Face model name, a local directory or an fsspec URL of "
                                                "a saved causal LM (safetensors): train fine-tunes it, import_model "
                                                "publishes it as it is; unset: train GPT-Neo from scratch")
    model_dtype: Literal["float32", "bfloat16"] = Field("float32", description="The dtype MODEL is loaded, "
                                                                               "fine-tuned and saved in")


class TrainSettings(CorpusSettings, ModelSettings):
    """The train stage: the corpus, the model (from scratch or MODEL), the tokenizer, the optimization."""

    max_length: Annotated[int, Field(ge=16, le=8192)] = Field(
        128, description="Tokens per training example (16 to 8192); longer documents are cut. With MODEL, at "
                         "most its positions")
    model_preset: Literal["tiny", "small", "gpt-neo-125m"] = Field(
        "tiny", description="Size of the GPT-Neo trained from scratch: tiny (4 layers, hidden 128), small (6 "
                            "layers, hidden 256), gpt-neo-125m (12 layers, hidden 768); not used with MODEL")
    tokenizer_name: str | None = Field(None, description="Pretrained tokenizer (Hugging Face name or directory) for "
                                                         "the model trained from scratch; default trains byte-level "
                                                         "BPE on the corpus")
    vocab_size: Annotated[int, Field(ge=300, le=250_000)] = Field(
        2000, description="Vocabulary size of the byte-level BPE tokenizer trained on the corpus (300 to 250,000)")
    batch_size: PositiveInt = Field(16, description="Examples per optimizer step (per process)")
    micro_batches: PositiveInt = Field(4, description="Forward passes each step's examples are split into, "
                                                      "sorted by length and padded to their own longest; "
                                                      "the step's gradient is the same for any number")
    num_train_epochs: PositiveFloat = Field(10.0, description="Passes over the training examples (a fraction "
                                                              "allowed)")
    learning_rate: PositiveFloat = Field(2e-3, description="Peak learning rate (AdamW, cosine schedule)")
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.05, description="Share of the training steps the learning rate warms up over (0 to below 1)")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.0, description="AdamW weight decay; 0 for none")
    training_seed: NonNegativeInt | None = Field(
        None, description="Seed of the initial weights and the batch order; default SEED (which also draws the "
                          "demo corpus): models of one corpus that differ only in training take other values")
    checkpoints: Annotated[int, Field(ge=1, le=1000)] = Field(
        4, description="Checkpoints saved and published to ARTIFACTS_URI over the run; a rerun resumes from the last")

    @model_validator(mode="after")
    def _micro_batches_divide_the_batch(self) -> TrainSettings:
        if self.batch_size % self.micro_batches:
            raise ValueError(f"MICRO_BATCHES: must divide BATCH_SIZE ({self.batch_size}) evenly, "
                             f"got {self.micro_batches}")
        return self

    @property
    def model_seed(self) -> int:
        return self.seed if self.training_seed is None else self.training_seed


class ImportModelSettings(TrainSettings):
    """MODEL published as it is to model/, with the corpus tokenized by its tokenizer in data/train/,
    so every later stage runs unchanged. Of the train stage's settings it reads the corpus's,
    MAX_LENGTH, MODEL, MODEL_DTYPE and TRACKED_MODULES."""

    @model_validator(mode="after")
    def _model_is_set(self) -> ImportModelSettings:
        if not self.model:
            raise ValueError("import_model needs MODEL: a Hugging Face model name, a local directory or an fsspec URL "
                             "of a saved causal LM")
        return self


class PreviewDataSettings(CorpusSettings):
    """preview_data: the first documents of the corpus, printed."""

    num_preview: PositiveInt = Field(4, description="Documents printed")


# ---- work spread over the pods of a Kubernetes Indexed Job --------------------------------------

class IndexedJobSettings(CommonSettings):
    """A stage whose work can be spread over pods, each doing the part its index names: the stage's
    own index setting, else the JOB_COMPLETION_INDEX an Indexed Job sets."""

    job_completion_index: NonNegativeInt | None = Field(
        None, description="Set by Kubernetes Indexed Jobs; used when SHARD_INDEX (or, in lds, SUBSET_INDEX) is not")

    def _index(self, own: int | None) -> int | None:
        """The part this pod does: its own index setting, else the Indexed Job's; None for all of them."""
        return own if own is not None else self.job_completion_index

    @staticmethod
    def _check_index(index: int | None, count: int, part: str, count_setting: str) -> None:
        if index is not None and index >= count:
            raise ValueError(f"{part} {index} is out of range: {count_setting} is {count} "
                             f"({part}s 0..{count - 1})")


class ShardSettings(IndexedJobSettings):
    """Which Kronfluence data partition this process computes, when the work is spread over pods
    (Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX). Without one, the stage computes every
    missing partition and aggregates."""

    shard_index: NonNegativeInt | None = Field(None, description="The data partition (0-based) to compute alone; "
                                                                 "unset: every missing one, then aggregate")

    @property
    def shard(self) -> int | None:
        return self._index(self.shard_index)


# ---- influence factors ---------------------------------------------------------------------------

class FitFactorsSettings(DeviceSettings, ShardSettings, TrackedModulesSettings):
    """fit_factors: the curvature approximation (Kronfluence's FactorArguments)."""

    factors_name: FactorsName = "tiny_lm_factors"
    factor_strategy: Strategy = Field("ekfac", description=f"One of {', '.join(STRATEGIES)} (or diagfisher)")
    factor_batch_size: FactorBatchSize = 16
    covariance_data_partitions: PositiveInt = Field(
        1, description="Parts the training examples are split into for the covariance phase; a shard computes one")
    lambda_data_partitions: PositiveInt = Field(
        1, description="Parts the training examples are split into for the lambda phase; a shard computes one")
    covariance_max_examples: PositiveInt | None = Field(
        None, description="Training examples the covariance matrices are fitted on at most; default all")
    lambda_max_examples: PositiveInt | None = Field(
        None, description="Training examples the lambda matrices are fitted on at most; default all")
    use_empirical_fisher: bool = Field(
        False, description="Fisher from the training labels (empirical) instead of labels sampled from the model")
    activation_covariance_dtype: Dtype = Field("float32", description="Dtype of the activation covariance matrices")
    gradient_covariance_dtype: Dtype = Field("float32", description="Dtype of the gradient covariance matrices")
    eigendecomposition_dtype: Literal["float32", "float64"] = Field(
        "float64", description="Dtype of the covariance matrices' eigendecomposition (kfac, ekfac)")
    lambda_dtype: Dtype = Field("float32", description="Dtype of the lambda matrices (the eigenvalue corrections "
                                                       "of ekfac, the diagonal of diagonal)")
    factor_phase: Literal["covariance", "eigendecomposition", "lambda", "all"] = Field(
        "all", description="Sharded EK-FAC runs in phases: covariance shards, eigendecomposition, lambda "
                           "shards, all (aggregate). Without a shard: everything up to this phase")

    @model_validator(mode="after")
    def _shard_fits_the_phase(self) -> FitFactorsSettings:
        if self.shard is None:
            return self
        if self.factor_phase not in ("covariance", "lambda"):
            raise ValueError("a shard computes one partition of the covariance or lambda phase: "
                             f"set FACTOR_PHASE=covariance or lambda, got {self.factor_phase}")
        partitions = (self.covariance_data_partitions if self.factor_phase == "covariance"
                      else self.lambda_data_partitions)
        if self.shard >= partitions:
            raise ValueError(f"shard {self.shard} is out of range: the {self.factor_phase} phase has "
                             f"{partitions} data partitions (0..{partitions - 1})")
        return self


class InspectFactorsSettings(CommonSettings):
    """inspect_factors: plots and spectrum statistics of fitted factors."""

    factors_name: FactorsName = "tiny_lm_factors"
    layer_num: NonNegativeInt | None = Field(None, description="Block (0-based) whose modules are plotted; "
                                                               "default the last")
    output_dir: str | None = Field(None, description="Local path or fsspec URL of a folder of yours the plots go to "
                                                      "(new, empty, or holding only an earlier run's output: nothing "
                                                      "else there is deleted); default reports/factors_<name> in "
                                                      "ARTIFACTS_URI")
    damping_factor: Damping = DEFAULT_DAMPING


# ---- influence scores ----------------------------------------------------------------------------

class QuerySettings(CommonSettings):
    """The prompts whose completions are explained, and how they are measured (compute_scores, evaluate)."""

    prompts: Prompts = SHIPPED_PROMPTS
    task: Literal["language_modeling", "margin", "custom"] = Field(
        "language_modeling", description="What is measured of each completion: language_modeling (summed "
                                         "cross-entropy), margin (summed negated margin of its tokens), custom "
                                         "(your own, in influence_core/tasks.py)")
    query_batch_size: PositiveInt | None = Field(None, description="Prompts per query batch; default all")
    query_gradient_rank: PositiveInt | None = Field(None, description="Rank of the low-rank approximation of the "
                                                                      "prompts' gradients; default full")


class ScoringSettings(DeviceSettings):
    """How training examples are scored with fitted factors (compute_scores, compute_self_scores;
    Kronfluence's ScoreArguments)."""

    factors_name: FactorsName = "tiny_lm_factors"
    train_batch_size: TrainBatchSize = 32
    damping_factor: Damping = DEFAULT_DAMPING
    per_sample_gradient_dtype: Dtype = Field("float32", description="Dtype of the per-example gradients")
    precondition_dtype: Dtype = Field("float32", description="Dtype of the gradients preconditioned with the "
                                                             "factors")
    score_dtype: Dtype = Field("float32", description="Dtype the scores are computed in")


class FusionSettings(CommonSettings):
    """How the published ranking combines the influence with lexical evidence (compute_scores, query)."""

    score_fusion: Literal["none", "bm25_zmean", "bm25_gate"] = Field(
        "none", description="How the published ranking combines the influence with BM25 on prompt + completion "
                            "(influence_core/fusion.py): none (influence alone), bm25_zmean (per prompt, the "
                            "weighted mean of the two's z-scores), bm25_gate (influence within BM25's top "
                            "GATE_FRACTION, the rest 0); the influence alone is published beside it")
    fusion_weight: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="SCORE_FUSION=bm25_zmean: BM25's weight in the mean (0 to 1)")
    gate_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.2, description="SCORE_FUSION=bm25_gate: share of the documents, the highest by BM25 per prompt, whose "
                         "influence is kept (above 0, at most 1)")


class ComputeScoresSettings(QuerySettings, ScoringSettings, ShardSettings, FusionSettings):
    """compute_scores: the influence of every training example on every prompt."""

    scores_name: ScoresName = "prompt_scores"
    score_data_partitions: PositiveInt = Field(
        1, description="Parts the training examples are split into, scored one after another; a shard scores one")
    ensemble_seeds: EnsembleSeeds = DEFAULT_ENSEMBLE_SEEDS

    @model_validator(mode="after")
    def _shard_in_range(self) -> ComputeScoresSettings:
        self._check_index(self.shard, self.score_data_partitions, "shard", "SCORE_DATA_PARTITIONS")
        return self


class EnsembleSettings(MemorySettings, IndexedJobSettings):
    """ensemble: the members compute_scores averages with ENSEMBLE_SEEDS, each trained as the model
    was (the train stage's settings as its _SUCCESS records them) with its own training seed and
    fitted as the factors FACTORS_NAME were, in ensemble/member_<k>/. compute_scores scores them."""

    factors_name: FactorsName = "tiny_lm_factors"
    ensemble_seeds: EnsembleSeeds = DEFAULT_ENSEMBLE_SEEDS
    member_index: NonNegativeInt | None = Field(
        None, description="The member (1 to ENSEMBLE_SEEDS - 1) to train and fit alone; 0 is the model "
                          "itself, which has nothing to do; unset: every member not done")

    @property
    def members(self) -> list[int]:
        """The members this process makes (the model itself, 0, is not one)."""
        index = self._index(self.member_index)
        return list(range(1, self.ensemble_seeds)) if index is None else [index] if index else []

    @model_validator(mode="after")
    def _member_in_range(self) -> EnsembleSettings:
        self._check_index(self._index(self.member_index), self.ensemble_seeds, "member", "ENSEMBLE_SEEDS")
        return self


class ComputeSelfScoresSettings(ScoringSettings):
    """Self-influence of every training example (its influence on its own loss): large values mark
    outliers, mislabelled or memorised text. The scoring settings mean what they do for compute_scores."""


class IndexSettings(ScoringSettings):
    """The gradient index (docs/guides/ask-new-questions.md): which one, and how its rows are made. The
    scoring settings (factors, damping, dtypes) mean what they do for compute_scores; an index is
    whitened with one set of factors and one damping, which every query of it must use."""

    index_name: Name = Field("index", description="Name of the index: build_index writes index/<name>/, query "
                                                   "reads it")


class BuildIndexSettings(IndexSettings, ShardSettings):
    """build_index: each training example's whitened, projected gradient, once, for queries later."""

    index_dim: NonNegativeInt = Field(
        INDEX_DIM_DEFAULT, description="Numbers the index stores per training example, whatever the model's size: "
                                       "shared equally among the tracked modules, each module's gradient (outputs "
                                       "x inputs) projected to its share; 0 keeps every module whole (exact scores)")
    index_dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="Dtype the index stores its rows in")
    index_shard_size: PositiveInt = Field(1024, description="Training examples per index shard (file), in corpus "
                                                            "order; each is published as soon as it is done")
    index_partitions: PositiveInt = Field(
        1, description="Pods the shards are spread over (an Indexed Job); pod i builds shards i, i + "
                       "INDEX_PARTITIONS, ...; a run without SHARD_INDEX builds the missing ones and publishes")
    index_search: Literal["auto", "exact", "rabitq", "rabitq2", "sq4", "sq8"] = Field(
        "auto", description="How a query searches the index: 'exact' reads every row of every shard; the others keep "
                            "beside each shard a faiss structure of its rows (search_<n>.faiss), search it instead "
                            "and read the full rows of each prompt's SEARCH_CANDIDATES highest and lowest alone: "
                            "'rabitq' and 'rabitq2' (RaBitQ, 1 and 2 bits a number), 'sq4' and 'sq8' (scalar "
                            f"quantisers, 4 and 8 bits); 'auto': exact below {SEARCH_AUTO_BYTES // 2 ** 30} GiB of "
                            f"rows (32,768 examples at the defaults), {SEARCH_AUTO} from there")

    @model_validator(mode="after")
    def _shard_in_range(self) -> BuildIndexSettings:
        self._check_index(self.shard, self.index_partitions, "shard", "INDEX_PARTITIONS")
        return self


class RerankSettings(CommonSettings):
    """How many of the index's candidates a query scores again exactly."""

    rerank_top_k: NonNegativeInt = Field(
        100, description="Each prompt's top candidates by the index that are scored again exactly (Kronfluence, "
                         "as compute_scores); 0: none")
    search_candidates: PositiveInt = Field(
        1000, description="With an approximate index (INDEX_SEARCH): each prompt's highest and lowest scores by "
                          "the search (this many of each, at least RERANK_TOP_K) whose full rows are read and scored "
                          "exactly by the index (32 KiB a row at the defaults); RERANK_TOP_K is drawn from them, and "
                          "every other example keeps the search's estimate")


def _local_folder(value: str | None) -> str | None:
    if value is not None and "://" in value:
        raise ValueError("a local folder, not a URL (the cache is of this machine's or pod's disk)")
    return value


class CacheSettings(CommonSettings):
    """Where a query keeps the artifacts it fetched (the model, the data, the factors, the index's
    shards), so that later queries on the same machine or pod neither download nor hash them again
    (the plan, and the check of a query's memory before it starts, read the data through it too)."""

    cache_dir: Annotated[str | None, AfterValidator(_local_folder)] = Field(
        None, description="Local folder the query keeps each artifact it fetched in, verified once (every file's "
                          "size and SHA-256 against its _SUCCESS) and filed under a digest of those checksums: a later "
                          "query reads it as it is, and a republished artifact gets a new entry (older ones stay until "
                          "the folder is deleted). Default $XDG_CACHE_HOME/influence-jobs, else "
                          "~/.cache/influence-jobs (in the image /cache/influence-jobs: the pod's emptyDir, kept as "
                          "long as the pod, unlike "
                          "each run's temporary folder); 'off' or empty: each query fetches and verifies everything "
                          "again into a temporary folder")

    @property
    def cache(self) -> Path | None:
        """The cache folder, absolute; None when it is off."""
        if self.cache_dir is not None and self.cache_dir.strip().lower() in ("", "off"):
            return None
        folder = self.cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "influence-jobs"
        return Path(folder).expanduser().absolute()


class QueryIndexSettings(QuerySettings, RerankSettings, IndexSettings, FusionSettings, CacheSettings):
    """query: the prompts scored against the index, without a pass over the training examples."""

    scores_name: ScoresName = "query_scores"
    prompt: str | None = Field(None, min_length=1, description="One prompt to answer at the terminal instead of "
                                                               "PROMPTS (with --completion); nothing is published")
    completion: str | None = Field(None, min_length=1, description="The completion of --prompt whose influence is "
                                                                   "asked")
    top_k: PositiveInt = Field(10, description="Documents printed for --prompt")

    @model_validator(mode="after")
    def _prompt_and_completion(self) -> QueryIndexSettings:
        if (self.prompt is None) != (self.completion is None):
            raise ValueError("PROMPT and COMPLETION go together: one question is a prompt and its completion")
        return self


class InspectScoresSettings(CommonSettings):
    """inspect_scores: the report of a prompt's most helpful and most harmful training examples."""

    scores_name: ScoresName = "prompt_scores"
    num_influential: PositiveInt = Field(5, description="Most helpful and most harmful training examples listed "
                                                        "per prompt (each)")
    excerpt_chars: PositiveInt = Field(400, description="Characters of a training example shown in the reports; "
                                                        "longer texts are cut")
    per_token_scores: bool = Field(True, description="Per-token influence of the top examples, for the HTML "
                                                     "report's highlighting (needs the model and the factors)")
    num_self_influential: PositiveInt = Field(10, description="Most self-influential examples listed, when "
                                                              "compute_self_scores has run")


class PipelineSettings(InspectScoresSettings, ComputeSelfScoresSettings, ComputeScoresSettings, EnsembleSettings,
                       InspectFactorsSettings, FitFactorsSettings, TrainSettings):
    """Every stage's settings at once, for running the analysis stages in order locally."""
    # The last base's fields come first: --help lists them in the order the stages run.


class PlanSettings(PipelineSettings, BuildIndexSettings, RerankSettings, CacheSettings):
    """The plan: every stage's estimated peak memory, published sizes and largest batch that fits, for
    these settings (the same as the stages'), before anything runs."""

    as_json: bool = Field(False, alias="json", description="Print the plan as JSON (docs/artifacts.md, \"plan\")")


S = TypeVar("S", bound=CommonSettings)


def _describe(error: dict) -> str:
    if not error["loc"]:  # a check across settings
        return f"invalid settings: {error['msg'].removeprefix('Value error, ')}"
    field = str(error["loc"][0])
    message = error["msg"].removeprefix("Value error, ")
    return f"invalid setting {field.upper()} (--{field}): {message}; got {error.get('input')!r}"


def load_settings(cls: type[S], argv: list[str] | None = None, prog: str = "python -m jobs") -> S:
    """Settings from the environment, overridden by CLI flags; one-line ConfigError on bad input."""
    try:
        return cls(_cli_parse_args=argv if argv is not None else [], _cli_prog_name=prog)
    except ValidationError as error:
        raise ConfigError(_describe(error.errors()[0])) from None
    except SettingsError as error:
        raise ConfigError(str(error).replace("\n", " ")) from None


def stage_settings(cls: type[S], settings: CommonSettings) -> S:
    """A stage's settings taken from a wider settings object (the pipeline's), without re-parsing."""
    return cls.model_validate(settings.model_dump(include=set(cls.model_fields)))


def recorded_settings(cls: type[S], recorded: dict) -> S:
    """A stage's settings as a _SUCCESS manifest recorded them; fields it did not record take their
    defaults, not this process's environment."""
    constructed = cls.model_construct(**{k: v for k, v in recorded.items() if k in cls.model_fields})
    return cls.model_validate(constructed.model_dump(include=set(cls.model_fields)))


def _comma_separated(value: object) -> object:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def _distinct(values: tuple) -> tuple:
    if len(set(values)) != len(values):
        raise ValueError("each strategy may be named once")
    return values


class LdsSettings(IndexedJobSettings):
    """The linear datamodeling score: the model retrained on random subsets of its training
    examples, each prompt measured on every retrained model, and the measured values correlated
    with what the scores predict for each subset. Retraining uses the train stage's settings as
    the model's _SUCCESS records them, and the model's own tokenizer."""

    subset_index: NonNegativeInt | None = Field(None, description="The subset (0-based) to retrain and measure "
                                                                  "alone; unset: every missing one, then correlate")
    lds_subsets: Annotated[int, Field(ge=2, le=100_000)] = Field(
        16, description="Random subsets of the training examples the model is retrained on")
    lds_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.5, description="Share of the training examples in each subset")
    lds_seeds: Annotated[int, Field(ge=1, le=100)] = Field(
        2, description="Models trained per subset, with training seeds the model's seed, +1, ...; their "
                       "measurements are averaged")
    lds_scores: Annotated[
        tuple[Name, ...], NoDecode, BeforeValidator(_comma_separated),
        Field(min_length=1, description="Comma-separated scores names whose LDS is reported (compute_scores' "
                                        "SCORES_NAME); they must score the prompts of PROMPTS"),
    ] = ("prompt_scores",)
    prompts: Prompts = SHIPPED_PROMPTS

    @property
    def subset(self) -> int | None:
        return self._index(self.subset_index)

    @model_validator(mode="after")
    def _subset_in_range(self) -> LdsSettings:
        self._check_index(self.subset, self.lds_subsets, "subset", "LDS_SUBSETS")
        return self


class EvaluateSettings(QuerySettings):
    """The fact-tracing evaluation: factors and scores for each strategy, under names of its own
    (factors_<eval_name>_<strategy>, scores_<eval_name>_<strategy>), ranked against the planted
    facts beside a lexical baseline; the prompts asking for planted facts are evaluated. Fitting
    and scoring settings not listed here take the stages' own defaults (or their environment
    variables)."""

    strategies: Annotated[
        tuple[Strategy, ...], NoDecode, BeforeValidator(_comma_separated), AfterValidator(_distinct),
        Field(min_length=1, description="Comma-separated strategies to evaluate"),
    ] = ("ekfac", "kfac", "diagonal", "identity")
    eval_name: Name = Field("eval", description="Prefix of the factors and scores names the evaluation uses")
    factor_batch_size: FactorBatchSize = 16
    train_batch_size: TrainBatchSize = 32
    damping_factor: Damping = DEFAULT_DAMPING


class FetchReportSettings(CommonSettings):
    """fetch_report: a report copied from the artifacts (a bucket, usually) to a local folder."""

    scores_name: ScoresName = "prompt_scores"
    report_dir: str = Field("./report", description="Local folder the report is copied into: new, empty, or "
                                                     "holding a report fetched before (replaced once the new one is "
                                                     "complete); a folder holding anything else is refused")
