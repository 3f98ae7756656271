"""All settings, one typed place. Environment variables first (what Job manifests set), and the
same fields as CLI flags with the original scripts' names (`--factors_name`, `--layer_num`, ...).

Field names are the flag names; upper-cased they are the environment variable names (no prefix).
Validation happens here, before any model loads: a bad value is one line and exit code 2.
"""

from __future__ import annotations

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
# The damping added to the curvature before it is inverted. 1e-8 is the value of Kronfluence's own
# default_score_arguments; "heuristic" is its ScoreArguments default, 0.1 x each module's mean
# eigenvalue, which predicted retraining worse on the demo (LDS 0.56 against 0.66; README, Evaluation).
DEFAULT_DAMPING = 1e-8
Damping = Annotated[
    PositiveFloat | Literal["heuristic"],
    Field(description="Damping added to the curvature before it is inverted: a number, or 'heuristic' (0.1 x "
                      "each module's mean eigenvalue)"),
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


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=False,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        validate_default=True,
    )

    artifacts_uri: str = Field("./artifacts", description="Local path or fsspec URL (s3://, gs://) of all artifacts")
    seed: NonNegativeInt = Field(0, description="Seed for the demo corpus, training and Fisher sampling")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    force: bool = Field(False, description="Redo the stage even if its outputs are complete")


class CorpusSettings(CommonSettings):
    dataset: str = Field("demo", description="'demo' or 'demo-hard' (built in, with planted facts), a Hugging Face "
                                             "dataset name, or a path/URL of .jsonl/.json/.parquet/.txt files")
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_column: str = "text"
    num_examples: PositiveInt | None = Field(None, description="Documents to use (demo: 600, hub: 10,000)")

    @model_validator(mode="after")
    def _demo_corpus_holds_its_facts(self) -> CorpusSettings:
        needed = minimum_documents(self.seed, self.dataset) if self.dataset in CORPORA else 0
        if self.num_examples and self.num_examples < needed:
            raise ValueError(f"NUM_EXAMPLES: the {self.dataset} corpus needs at least {needed} documents to plant "
                             f"its facts, got {self.num_examples}")
        return self


class TrackedModulesSettings(CommonSettings):
    tracked_modules: Annotated[str | None, AfterValidator(_regular_expression)] = Field(
        None, description="Regular expression (re.search) over the model's Linear module names to track, e.g. "
                          "'mlp|attn'; default the MLP projections of every block (GPT-Neo, GPT-2, GPT-NeoX, "
                          "Llama, Mistral, Qwen2)")


class ModelSettings(TrackedModulesSettings):
    """A model of your own (README, "Analyse your own model")."""

    model: str | None = Field(None, description="A Hugging Face model name, a local directory or an fsspec URL of "
                                                "a saved causal LM (safetensors): train fine-tunes it, import_model "
                                                "publishes it as it is; unset: train GPT-Neo from scratch")
    model_dtype: Literal["float32", "bfloat16"] = Field("float32", description="The dtype MODEL is loaded, "
                                                                               "fine-tuned and saved in")


class TrainSettings(CorpusSettings, ModelSettings):
    max_length: Annotated[int, Field(ge=16, le=8192)] = 128
    model_preset: Literal["tiny", "small", "gpt-neo-125m"] = "tiny"
    tokenizer_name: str | None = Field(None, description="Pretrained tokenizer; default trains byte-level BPE")
    vocab_size: Annotated[int, Field(ge=300, le=250_000)] = 2000
    batch_size: PositiveInt = Field(16, description="Examples per optimizer step (per process)")
    micro_batches: PositiveInt = Field(4, description="Forward passes each step's examples are split into, "
                                                      "sorted by length and padded to their own longest; "
                                                      "the step's gradient is the same for any number")
    num_train_epochs: PositiveFloat = 10.0
    learning_rate: PositiveFloat = 2e-3
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.05
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
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


class ShardSettings(CommonSettings):
    """Which Kronfluence data partition this process computes, when the work is spread over pods
    (Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX). Without one, the stage computes every
    missing partition and aggregates."""

    shard_index: NonNegativeInt | None = Field(None, description="The data partition to compute alone")
    job_completion_index: NonNegativeInt | None = Field(None, description="Set by Indexed Jobs; "
                                                                          "used when SHARD_INDEX is not")

    @property
    def shard(self) -> int | None:
        return self.shard_index if self.shard_index is not None else self.job_completion_index


class FitFactorsSettings(ShardSettings, TrackedModulesSettings):
    factors_name: Name = "tiny_lm_factors"
    factor_strategy: Strategy = Field("ekfac", description=f"One of {', '.join(STRATEGIES)} (or diagfisher)")
    factor_batch_size: PositiveInt = 16
    covariance_data_partitions: PositiveInt = 1
    lambda_data_partitions: PositiveInt = 1
    covariance_max_examples: PositiveInt | None = None
    lambda_max_examples: PositiveInt | None = None
    use_empirical_fisher: bool = False
    activation_covariance_dtype: Dtype = "float32"
    gradient_covariance_dtype: Dtype = "float32"
    eigendecomposition_dtype: Literal["float32", "float64"] = "float64"
    lambda_dtype: Dtype = "float32"
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


class InspectFactorsSettings(CommonSettings):
    factors_name: Name = "tiny_lm_factors"
    layer_num: NonNegativeInt | None = Field(None, description="GPT-Neo block to plot; default the last")
    output_dir: str | None = Field(None, description="Where the plots go; default reports/factors_<name>")


class ComputeScoresSettings(ShardSettings):
    factors_name: Name = "tiny_lm_factors"
    scores_name: Name = "prompt_scores"
    prompts: str = Field(SHIPPED_PROMPTS, description="Path or URL of the prompts file")
    task: Literal["language_modeling", "margin", "custom"] = "language_modeling"
    query_gradient_rank: PositiveInt | None = Field(None, description="Low-rank query gradients; default full")
    query_batch_size: PositiveInt | None = Field(None, description="Prompts per query batch; default all")
    train_batch_size: PositiveInt = 32
    damping_factor: Damping = DEFAULT_DAMPING
    per_sample_gradient_dtype: Dtype = "float32"
    precondition_dtype: Dtype = "float32"
    score_dtype: Dtype = "float32"
    score_data_partitions: PositiveInt = 1

    @model_validator(mode="after")
    def _shard_in_range(self) -> ComputeScoresSettings:
        if self.shard is not None and self.shard >= self.score_data_partitions:
            raise ValueError(f"shard {self.shard} is out of range: SCORE_DATA_PARTITIONS is "
                             f"{self.score_data_partitions} (shards 0..{self.score_data_partitions - 1})")
        return self


class ComputeSelfScoresSettings(CommonSettings):
    """Self-influence of every training example (its influence on its own loss): large values mark
    outliers, mislabelled or memorised text. The scoring settings mean what they do for compute_scores."""

    factors_name: Name = "tiny_lm_factors"
    train_batch_size: PositiveInt = 32
    damping_factor: Damping = DEFAULT_DAMPING
    per_sample_gradient_dtype: Dtype = "float32"
    precondition_dtype: Dtype = "float32"
    score_dtype: Dtype = "float32"


class InspectScoresSettings(CommonSettings):
    scores_name: Name = "prompt_scores"
    num_influential: PositiveInt = 5
    excerpt_chars: PositiveInt = 400
    per_token_scores: bool = Field(True, description="Per-token influence of the top examples, for the HTML "
                                                     "report's highlighting (needs the model and the factors)")
    num_self_influential: PositiveInt = Field(10, description="Most self-influential examples listed, when "
                                                              "compute_self_scores has run")


class PreviewDataSettings(CorpusSettings):
    num_preview: PositiveInt = 4


class PipelineSettings(TrainSettings, FitFactorsSettings, InspectFactorsSettings, ComputeScoresSettings,
                       ComputeSelfScoresSettings, InspectScoresSettings):
    """Every stage's settings at once, for running the analysis stages in order locally."""


S = TypeVar("S", bound=CommonSettings)


def _describe(error: dict) -> str:
    if not error["loc"]:  # a check across settings
        return f"invalid settings: {error['msg'].removeprefix('Value error, ')}"
    field = str(error["loc"][0])
    return f"invalid setting {field.upper()} (--{field}): {error['msg']}; got {error.get('input')!r}"


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
    return stage_settings(cls, cls.model_construct(**{k: v for k, v in recorded.items() if k in cls.model_fields}))


def _comma_separated(value: object) -> object:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def _distinct(values: tuple) -> tuple:
    if len(set(values)) != len(values):
        raise ValueError("each strategy may be named once")
    return values


class LdsSettings(CommonSettings):
    """The linear datamodeling score: the model retrained on random subsets of its training
    examples, each prompt measured on every retrained model, and the measured values correlated
    with what the scores predict for each subset. Retraining uses the train stage's settings as
    the model's _SUCCESS records them, and the model's own tokenizer."""

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
    prompts: str = Field(SHIPPED_PROMPTS, description="Prompts measured on the retrained models")
    subset_index: NonNegativeInt | None = Field(None, description="Retrain and measure this subset alone")
    job_completion_index: NonNegativeInt | None = Field(None, description="Set by Indexed Jobs; used when "
                                                                          "SUBSET_INDEX is not")

    @property
    def subset(self) -> int | None:
        return self.subset_index if self.subset_index is not None else self.job_completion_index

    @model_validator(mode="after")
    def _subset_in_range(self) -> LdsSettings:
        if self.subset is not None and self.subset >= self.lds_subsets:
            raise ValueError(f"subset {self.subset} is out of range: LDS_SUBSETS is {self.lds_subsets} "
                             f"(subsets 0..{self.lds_subsets - 1})")
        return self


class EvaluateSettings(CommonSettings):
    """The fact-tracing evaluation: factors and scores for each strategy, under names of its own
    (factors_<eval_name>_<strategy>, scores_<eval_name>_<strategy>), ranked against the planted
    facts beside a lexical baseline. Fitting and scoring settings not listed here take the stages'
    own defaults (or their environment variables)."""

    strategies: Annotated[
        tuple[Strategy, ...], NoDecode, BeforeValidator(_comma_separated), AfterValidator(_distinct),
        Field(min_length=1, description="Comma-separated strategies to evaluate"),
    ] = ("ekfac", "kfac", "diagonal", "identity")
    eval_name: Name = Field("eval", description="Prefix of the factors and scores names the evaluation uses")
    prompts: str = Field(SHIPPED_PROMPTS, description="Prompts file; the ones asking for planted facts are evaluated")
    task: Literal["language_modeling", "margin", "custom"] = "language_modeling"
    factor_batch_size: PositiveInt = 16
    train_batch_size: PositiveInt = 32
    query_batch_size: PositiveInt | None = Field(None, description="Prompts per query batch; default all")
    query_gradient_rank: PositiveInt | None = Field(None, description="Low-rank query gradients; default full")
    damping_factor: Damping = DEFAULT_DAMPING
