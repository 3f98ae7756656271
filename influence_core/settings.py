"""All settings, one typed place. Environment variables first (what Job manifests set), and the
same fields as CLI flags with the original scripts' names (`--factors_name`, `--layer_num`, ...).

Field names are the flag names; upper-cased they are the environment variable names (no prefix).
Validation happens here, before any model loads: a bad value is one line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BeforeValidator, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

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
    dataset: str = Field("demo", description="'demo', a Hugging Face dataset name, or a path/URL of "
                                             ".jsonl/.json/.parquet/.txt files")
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_column: str = "text"
    num_examples: PositiveInt | None = Field(None, description="Documents to use (demo: 600, hub: 10,000)")


class TrainSettings(CorpusSettings):
    max_length: Annotated[int, Field(ge=16, le=8192)] = 128
    model_preset: Literal["tiny", "small", "gpt-neo-125m"] = "tiny"
    tokenizer_name: str | None = Field(None, description="Pretrained tokenizer; default trains byte-level BPE")
    vocab_size: Annotated[int, Field(ge=300, le=250_000)] = 2000
    batch_size: PositiveInt = 16
    gradient_accumulation_steps: PositiveInt = 1
    num_train_epochs: PositiveFloat = 10.0
    learning_rate: PositiveFloat = 2e-3
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.05
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    group_by_length: bool = True


class FitFactorsSettings(CommonSettings):
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


class InspectFactorsSettings(CommonSettings):
    factors_name: Name = "tiny_lm_factors"
    layer_num: NonNegativeInt | None = Field(None, description="GPT-Neo block to plot; default the last")
    output_dir: str | None = Field(None, description="Where the plots go; default reports/factors_<name>")


class ComputeScoresSettings(CommonSettings):
    factors_name: Name = "tiny_lm_factors"
    scores_name: Name = "prompt_scores"
    prompts: str = Field(SHIPPED_PROMPTS, description="Path or URL of the prompts file")
    task: Literal["language_modeling", "margin", "custom"] = "language_modeling"
    query_gradient_rank: PositiveInt | None = Field(None, description="Low-rank query gradients; default full")
    query_batch_size: PositiveInt | None = Field(None, description="Prompts per query batch; default all")
    train_batch_size: PositiveInt = 32
    damping_factor: PositiveFloat | None = Field(None, description="Default: 0.1 x mean eigenvalue")
    per_sample_gradient_dtype: Dtype = "float32"
    precondition_dtype: Dtype = "float32"
    score_dtype: Dtype = "float32"
    score_data_partitions: PositiveInt = 1


class InspectScoresSettings(CommonSettings):
    scores_name: Name = "prompt_scores"
    num_influential: PositiveInt = 5
    excerpt_chars: PositiveInt = 400


class PreviewDataSettings(CorpusSettings):
    num_preview: PositiveInt = 4


class PipelineSettings(TrainSettings, FitFactorsSettings, InspectFactorsSettings, ComputeScoresSettings,
                       InspectScoresSettings):
    """Every stage's settings at once, for running the analysis stages in order locally."""


S = TypeVar("S", bound=CommonSettings)


def _describe(error: dict) -> str:
    field = str(error["loc"][0]) if error["loc"] else "settings"
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
