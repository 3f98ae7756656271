"""The artifacts, one class per kind: where it lives below ARTIFACTS_URI, its files, the stage that
makes it, the manifest its `_SUCCESS` holds (typed, with the producing stage's settings class) and
readers for what later stages need of it. A stage reads another stage's output only through these
classes, and `require` checks the lineage of a stage's inputs, here and nowhere else.

    model/                        Model: save_pretrained's config, weights and tokenizer, training_metrics.json
    data/train/                   TrainData: datasets.save_to_disk, example i = document i of the corpus;
                                  bm25/ (the corpus's BM25 index, bm25s's files), planted_facts.json
    checkpoints/train/            TrainCheckpoints: the last checkpoint of an unfinished training run
    influence/factors_<name>/     Factors: Kronfluence's factor files, tracked_modules.json
    influence/scores_<name>/      Scores: pairwise_scores.safetensors (prompts x examples, corpus order), prompts.json
    influence/self_scores_<name>/ SelfScores: self_scores.safetensors (one per example, corpus order)
    index/<name>/                 Index: shard_<n>.safetensors (whitened, projected gradients), projection.json
    reports/factors_<name>/       FactorsReport: plots, summary.json
    reports/<scores_name>/        Report: <scores_name>_report.md, report.json, report.html, plots
    reports/evaluation/           Evaluation: evaluation.json, evaluation.md
    reports/lds/                  LdsReport: lds.json, lds.md, lds.png, lds_prompts.png
    lds/subsets/<index>/          LdsSubset: measurements.json of the models retrained on one subset
    ensemble/member_<k>/...       member k of an ensemble (ENSEMBLE_SEEDS): a tree of its own, laid out as
                                  above (model/, data/train/, influence/factors_<name>/, influence/scores_<name>/)

Lineage: every manifest records what its output was made from (`inputs`: each input artifact's
path and fingerprint, the digest of its manifest; external inputs by setting name and content
digest). `require` refuses, in one line naming both, an input made from another version of an
artifact than the one published now, anywhere up its chain. A member of an ensemble records its
inputs within its own tree (its stages ran with ARTIFACTS_URI there); the chain is followed there.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

from influence_core import settings as settings_module
from influence_core.errors import ConfigError
from influence_core.settings import CommonSettings, recorded_settings
from influence_core.storage import SUCCESS, Store, fingerprint_of

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
FIELD = re.compile(r"\{(\w+)[^}]*\}")
A = TypeVar("A", bound="Artifact")
MEMBER = "ensemble/member_{number}"  # an ensemble member's tree, below ARTIFACTS_URI
MEMBER_PREFIX = re.compile(r"^ensemble/member_(\d+)/")


class Manifest(BaseModel):
    """What a `_SUCCESS` file records: the stage, its settings and its inputs (what the output was
    made from), the code (package versions, git sha), the timings, every file's size and SHA-256,
    and what the stage adds of its own (`extra`)."""

    model_config = ConfigDict(extra="allow")

    stage: str = ""
    settings: dict[str, Any] = {}
    inputs: dict[str, str] = {}
    versions: dict[str, str | None] = {}
    git_sha: str | None = None
    timings: dict[str, float] = {}
    files: dict[str, tuple[int, str]] | None = None
    _fingerprint: str = PrivateAttr("")

    @classmethod
    def parse(cls, raw: dict) -> Manifest:
        manifest = cls.model_validate(raw)
        manifest._fingerprint = fingerprint_of(raw)
        return manifest

    @property
    def fingerprint(self) -> str:
        """The digest of the manifest as written: what an output made from this one records of it."""
        return self._fingerprint

    def extra(self, key: str) -> Any:
        return (self.model_extra or {}).get(key)

    @property
    def seconds(self) -> float | None:
        """How long the stage took to make it."""
        return self.timings.get("seconds")


class Artifact:
    """One artifact: its path (the kind's template, formatted with the name it is given) and, once
    bound to a store (`require`, `find`), its manifest."""

    template: ClassVar[str]
    producer: ClassVar[str]
    """The stage to run to make it (named in the message for a missing input)."""
    settings_class: ClassVar[type[CommonSettings] | None] = None
    """The producing stage's settings class, which `settings` returns."""

    def __init__(self, name: str | int | None = None, *, relative: str | None = None) -> None:
        fields = FIELD.findall(self.template)
        self.relative = relative or (self.template.format(**{fields[0]: name}) if fields else self.template)
        self.store: Store | None = None
        self.manifest: Manifest | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.relative!r})"

    @property
    def member(self) -> int | None:
        """The ensemble member whose tree it is in (ensemble/member_<k>/...); None for the model's own."""
        found = MEMBER_PREFIX.match(self.relative)
        return int(found.group(1)) if found else None

    @property
    def maker(self) -> str:
        """The stage to run to make it: a member's model, data and factors are the ensemble stage's
        (its scores are compute_scores', which scores the members with the model)."""
        return "ensemble" if self.member is not None and self.producer in ("train", "fit_factors") else self.producer

    @classmethod
    def pattern(cls) -> re.Pattern:
        """The paths of this kind, and anything below them: each {field} is one path segment."""
        return re.compile("[^/]+".join(map(re.escape, FIELD.split(cls.template)[::2])) + "(/.*)?")

    # ---- bound to a store ----

    def bind(self: A, store: Store) -> A | None:
        """This artifact in `store` when it is complete (has a `_SUCCESS`), else None."""
        raw = store.manifest(self.relative)
        if raw is None:
            return None
        self.store, self.manifest = store, Manifest.parse(raw)
        return self

    @property
    def url(self) -> str:
        assert self.store is not None, f"{self} is not bound to a store"
        return self.store.url(self.relative)

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def made_by(self) -> str:
        """The stage that made it (for an artifact several stages make, the one that did; for an
        ensemble member's model, data or factors, the ensemble stage, which ran the member's stages)."""
        return self.maker if self.member is not None else self.manifest.stage or self.producer

    def inputs_of(self, kind: type[A]) -> list[A]:
        """The artifacts of `kind` it was made from, as its manifest records them (unbound; a member's
        paths within the member's tree)."""
        tree = MEMBER_PREFIX.match(self.relative)
        return [kind(relative=(tree.group() if tree else "") + path)
                for path in self.manifest.inputs if kind_of(path) is kind]

    @property
    def settings(self) -> CommonSettings:
        """The producing stage's settings, as the manifest recorded them (unrecorded ones at their defaults)."""
        return recorded_settings(self.settings_class, self.manifest.settings)

    def fetch(self, destination: Path, cache: Path | None = None) -> Path:
        """A verified local copy of every file (sizes and checksums as `_SUCCESS` recorded them).
        With a `cache` folder (CACHE_DIR), the copy kept there, verified only when it first came
        (Store.fetch_cached), and `destination` a link to it: to read, never to write into."""
        remedy = f"rerun the {self.made_by} stage with FORCE=true"
        if cache is None:
            return self.store.fetch(self.relative, destination, remedy=remedy)
        entry = self.store.fetch_cached(self.relative, cache, remedy=remedy)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.is_symlink():
            destination.unlink()
        destination.symlink_to(entry.absolute(), target_is_directory=True)
        return destination

    def fetch_file(self, name: str, destination: Path, cache: Path | None = None) -> Path:
        """One of its files, verified as `fetch` verifies them all (read in place from a local store);
        with a `cache` folder, the file in the copy kept there (Store.fetch_file_cached), not
        `destination`."""
        remedy = f"rerun the {self.made_by} stage with FORCE=true"
        if cache is not None:
            return self.store.fetch_file_cached(self.relative, name, self.manifest.files or {}, cache, remedy=remedy)
        return self.store.fetch_file(self.relative, name, self.manifest.files or {}, destination, remedy=remedy)

    def read_json(self, name: str) -> Any:
        """One small JSON file of it, read directly (None when it has no such file)."""
        return self.store.read_json(f"{self.relative}/{name}")

    def has(self, name: str) -> bool:
        return name in (self.manifest.files or {})


# ---- the kinds ----------------------------------------------------------------------------------

class Model(Artifact):
    """The causal LM every later stage analyses: trained from scratch, fine-tuned from MODEL (train),
    or MODEL as it is (import_model)."""

    template = "model"
    producer = "train"
    settings_class = settings_module.TrainSettings
    CONFIG = "config.json"  # save_pretrained's
    METRICS = "training_metrics.json"

    @property
    def family(self) -> Literal["scratch", "fine_tuned", "imported"]:
        """How it came to be: trained from scratch, fine-tuned from MODEL, or MODEL imported as it is."""
        if self.manifest.stage == "import_model":
            return "imported"
        return "fine_tuned" if self.manifest.settings.get("model") else "scratch"

    @property
    def source(self) -> str | None:
        """MODEL, for a fine-tuned or imported model."""
        return self.manifest.settings.get("model")

    @property
    def source_digest(self) -> str | None:
        """The content digest MODEL had when it was read (influence_core.sources)."""
        return self.manifest.inputs.get("MODEL")

    def config(self) -> dict:
        return self.read_json(self.CONFIG)


class TrainData(Artifact):
    """The tokenized training examples, in corpus order (published with the model)."""

    template = "data/train"
    producer = "train"
    settings_class = settings_module.TrainSettings
    PLANTED_FACTS = "planted_facts.json"  # the demo corpora's facts and the documents stating them
    BM25 = "bm25"  # the corpus's BM25 index, bm25s's files (influence_core.fusion); absent in data published before

    def facts(self) -> list[dict] | None:
        return self.read_json(self.PLANTED_FACTS) if self.has(self.PLANTED_FACTS) else None

    @staticmethod
    def bm25_dir(local: Path) -> Path:
        return local / TrainData.BM25


class TrainCheckpoints(Artifact):
    """The Trainer's checkpoints of an unfinished training run (train's own, removed when it ends)."""

    template = "checkpoints/train"
    producer = "train"


class Factors(Artifact):
    """Kronfluence's factor files (named by Kronfluence) and the modules they cover."""

    template = "influence/factors_{factors_name}"
    producer = "fit_factors"
    settings_class = settings_module.FitFactorsSettings
    TRACKED_MODULES = "tracked_modules.json"

    @property
    def strategy(self) -> str:
        return self.manifest.settings.get("factor_strategy", "ekfac")

    def tracked_modules(self) -> list[str]:
        return self.read_json(self.TRACKED_MODULES)

    @staticmethod
    def tracked_modules_file(local: Path) -> Path:
        return local / Factors.TRACKED_MODULES


class Scores(Artifact):
    """Pairwise scores: prompts x training examples, in corpus order, and the prompts scored."""

    template = "influence/scores_{scores_name}"
    producer = "compute_scores"
    settings_class = settings_module.ComputeScoresSettings
    MATRIX = "pairwise_scores.safetensors"  # Kronfluence's name
    KEY = "all_modules"  # the matrix summed over the tracked modules (Kronfluence's ALL_MODULE_NAME)
    PROMPTS = "prompts.json"
    ARGUMENTS = "score_arguments.json"  # Kronfluence's record of its ScoreArguments
    RESCORED = "rescored.json"  # query's: {"examples": [...]} scored again exactly; the others are the index's
    # With SCORE_FUSION: BM25 of every document for every prompt, and the ranking fused from it and
    # the influence (influence_core.fusion); MATRIX stays Kronfluence's influence alone.
    LEXICAL = "bm25_scores.safetensors"
    FUSED = "fused_scores.safetensors"

    @property
    def factors_name(self) -> str:
        return self.manifest.settings.get("factors_name", "")

    @property
    def factors(self) -> Factors:
        """The factors its influence was computed with (unbound): what every reader that needs them
        (per-token scores, an ensemble's members) asks, not the name a setting gives now."""
        return self.inputs_of(Factors)[0]

    @property
    def members(self) -> list[Scores]:
        """The ensemble members' scores its influence averages (unbound); none for one model's."""
        return [scores for scores in self.inputs_of(Scores) if scores.member is not None]

    @property
    def models(self) -> int:
        """How many models' influence it averages: the model's own and its members'."""
        return 1 + len(self.members)

    @property
    def task(self) -> str:
        return self.manifest.settings.get("task", "language_modeling")

    @property
    def strategy(self) -> str | None:
        return self.manifest.extra("factor_strategy")

    @property
    def fusion(self) -> str:
        return self.manifest.settings.get("score_fusion", "none")

    def prompts(self) -> list[dict]:
        return self.read_json(self.PROMPTS)

    def rescored(self) -> dict | None:
        """For scores a query made from an index: {"rerank_top_k": K, "examples": the training
        examples whose scores are exact}; None for scores that are all exact."""
        return self.read_json(self.RESCORED) if self.has(self.RESCORED) else None

    @staticmethod
    def matrix(local: Path) -> torch.Tensor:
        """The ranking the scores publish: the fused one with SCORE_FUSION, else the influence."""
        return Scores.influence(local) if not (local / Scores.FUSED).exists() else Scores.load(local / Scores.FUSED)

    @staticmethod
    def influence(local: Path) -> torch.Tensor:
        """Kronfluence's influence scores alone (with ENSEMBLE_SEEDS, their mean over the ensemble's models)."""
        return Scores.load(local / Scores.MATRIX)

    @staticmethod
    def lexical(local: Path) -> torch.Tensor | None:
        """BM25's scores, published beside the influence with SCORE_FUSION; None without."""
        return Scores.load(local / Scores.LEXICAL) if (local / Scores.LEXICAL).exists() else None

    @staticmethod
    def load(path: Path) -> torch.Tensor:
        """One scores file's matrix."""
        from safetensors.torch import load_file

        return load_file(str(path))[Scores.KEY]


class SelfScores(Artifact):
    """Each training example's influence on its own loss, in corpus order."""

    template = "influence/self_scores_{factors_name}"
    producer = "compute_self_scores"
    settings_class = settings_module.ComputeSelfScoresSettings
    VALUES = "self_scores.safetensors"  # Kronfluence's name

    @staticmethod
    def values(local: Path) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(local / SelfScores.VALUES))[Scores.KEY]


class Index(Artifact):
    """The gradient index: each training example's whitened, projected gradient (influence_core.index),
    in shards of INDEX_SHARD_SIZE examples in corpus order, and the projection that made them."""

    template = "index/{index_name}"
    producer = "build_index"
    settings_class = settings_module.BuildIndexSettings
    PROJECTION = "projection.json"  # influence_core.index.Projection.to_json
    ROWS = "rows"  # a shard's tensor: examples x floats per example

    @staticmethod
    def shard(number: int) -> str:
        return f"shard_{number:05d}.safetensors"

    @staticmethod
    def search(number: int) -> str:
        """The shard's search structure (INDEX_SEARCH other than exact; influence_core.search)."""
        return f"search_{number:05d}.faiss"

    @staticmethod
    def shard_count(examples: int, shard_size: int) -> int:
        return -(-examples // shard_size)

    @property
    def factors_name(self) -> str:
        return self.manifest.settings.get("factors_name", "")

    def projection(self) -> dict:
        return self.read_json(self.PROJECTION)

    def shards(self) -> list[str]:
        """The shard files the manifest lists, in corpus order: only names `shard` gives, never a
        file that was still being written or any other."""
        numbers = {}
        for name in self.manifest.files or {}:
            found = re.fullmatch(r"shard_(\d{5,})\.safetensors", name)
            if found and name == self.shard(int(found.group(1))):
                numbers[int(found.group(1))] = name
        return [numbers[number] for number in sorted(numbers)]  # by number: past 99999 a name grows a digit

    def check_query(self, query: CommonSettings) -> None:
        """A query must precondition as the index's rows were whitened: the same factors (name;
        their version is the lineage's), the same damping and precondition dtype, and the same
        autocast (its rows' and the candidates' exact scores are computed under it)."""
        built = self.manifest.settings
        for field in ("factors_name", "damping_factor", "precondition_dtype", "amp_dtype"):
            theirs, mine = built.get(field), getattr(query, field)
            if str(theirs) != str(mine):
                raise ConfigError(f"{field.upper()}={mine}: the index {self.url} was built with {field.upper()}="
                                  f"{theirs} (its rows are whitened with them); query with {theirs}, or build "
                                  f"another index (INDEX_NAME) with {mine}")


class FactorsReport(Artifact):
    """inspect_factors' plots of one block and spectrum statistics of every module (also written
    to a folder of the user's, OUTPUT_DIR)."""

    template = "reports/factors_{factors_name}"
    producer = "inspect_factors"
    settings_class = settings_module.InspectFactorsSettings
    SUMMARY = "summary.json"

    @staticmethod
    def plot(kind: Literal["lambda_matrix", "covariance", "eigenvalues"], module: str) -> str:
        return f"{kind}_{module}.png"


class Report(Artifact):
    """What a person reads about one set of scores."""

    template = "reports/{scores_name}"
    producer = "inspect_scores"
    settings_class = settings_module.InspectScoresSettings
    JSON = "report.json"
    HTML = "report.html"
    DISTRIBUTIONS = "score_distributions.png"

    @staticmethod
    def markdown(scores_name: str) -> str:
        return f"{scores_name}_report.md"  # the original project's name, prompt_scores_report.md

    @staticmethod
    def distribution_plot(number: int) -> str:
        return f"score_distribution_{number:02d}.png"


class Evaluation(Artifact):
    """The fact-tracing evaluation of every strategy beside text search."""

    template = "reports/evaluation"
    producer = "evaluate"
    settings_class = settings_module.EvaluateSettings
    JSON = "evaluation.json"
    MARKDOWN = "evaluation.md"


class LdsReport(Artifact):
    """The linear datamodeling score of LDS_SCORES and the baselines."""

    template = "reports/lds"
    producer = "lds"
    settings_class = settings_module.LdsSettings
    JSON = "lds.json"
    MARKDOWN = "lds.md"
    PLOT = "lds.png"
    PROMPTS_PLOT = "lds_prompts.png"
    BASELINES = {"identity": "identity (gradient dot products)", "bm25": "BM25 on prompt + completion",
                 "random": "random scores"}
    IDENTITY = "lds_identity"  # the factors and scores names of the identity baseline, which the lds stage makes

    def result(self) -> dict:
        return self.read_json(self.JSON)

    def measured(self, scores: Scores) -> bool:
        """Whether it measured these very scores, not another version of them."""
        return self.manifest.inputs.get(scores.relative) == scores.fingerprint


class LdsSubset(Artifact):
    """The measurements of the models retrained on one random subset of the training examples."""

    template = "lds/subsets/{subset_index:05d}"
    producer = "lds"
    MEASUREMENTS = "measurements.json"

    def measurements(self) -> dict:
        return self.read_json(self.MEASUREMENTS)


KINDS: tuple[type[Artifact], ...] = (Model, TrainData, TrainCheckpoints, Factors, Scores, SelfScores, Index,
                                     FactorsReport, Report, Evaluation, LdsReport, LdsSubset)
# The most literal template first (reports/lds is the LDS report, not a report named "lds").
_BY_SPECIFICITY = sorted(KINDS, key=lambda kind: -len(FIELD.sub("", kind.template)))


def kind_of(relative: str) -> type[Artifact] | None:
    """The kind of artifact at a path (or below it, or in an ensemble member's tree); None for
    anything else (an external input's name)."""
    relative = MEMBER_PREFIX.sub("", relative, count=1)
    return next((kind for kind in _BY_SPECIFICITY if kind.pattern().fullmatch(relative)), None)


def in_member(artifact: A, number: int) -> A:
    """The same artifact in ensemble member `number`'s tree (ensemble/member_<number>/...)."""
    return type(artifact)(relative=f"{MEMBER.format(number=number)}/{artifact.relative}")


def member_uri(artifacts_uri: str, number: int) -> str:
    """The ARTIFACTS_URI member `number`'s stages run with."""
    return f"{artifacts_uri.rstrip('/')}/{MEMBER.format(number=number)}"


def at(store: Store, relative: str) -> Artifact | None:
    """The complete artifact at a path, as its kind, or None."""
    kind = kind_of(relative)
    if kind is None:
        return None
    return kind(relative=relative).bind(store)


def reserved(field: str, value: str) -> str | None:
    """The artifact a name given to `field` (scores_name, factors_name) would take the place of: a
    path of another kind (reports/<SCORES_NAME> = reports/lds is the LDS report), or a name the
    lds stage gives its baseline; None when the name is free."""
    if value == LdsReport.IDENTITY:
        return f"the lds stage's identity baseline ({Factors(value).relative}, {Scores(value).relative})"
    for kind in KINDS:
        if f"{{{field}}}" not in kind.template:
            continue
        path = kind(value).relative
        other = kind_of(path)
        if other is not None and other is not kind:
            return f"{path}, the {other.producer} stage's output"
    return None


def check_names(settings: CommonSettings) -> None:
    """Refuse a name a user gives whose artifact would be another's (reports/<SCORES_NAME> with
    SCORES_NAME=lds is the LDS report) or a baseline's of the lds stage, before anything runs. Every
    stage's settings pass here when parsed (jobs.common.parse); a stage's settings built in-process
    (the lds stage's identity baseline) or read from a manifest do not."""
    for field in ("factors_name", "scores_name"):
        value = getattr(settings, field, None)
        if value is not None and (taken := reserved(field, value)):
            raise ConfigError(f"invalid setting {field.upper()} (--{field}): the name {value!r} is taken by {taken}; "
                              "choose another")
    baselines = [name for name in getattr(settings, "lds_scores", ()) if name in LdsReport.BASELINES
                 or name == LdsReport.IDENTITY]
    if baselines:
        raise ConfigError(f"invalid setting LDS_SCORES (--lds_scores): {', '.join(baselines)}: the name of a "
                          f"baseline the lds stage computes itself ({', '.join(LdsReport.BASELINES)}); name the scores "
                          "otherwise")


# ---- inputs and their lineage -------------------------------------------------------------------

def find(store: Store, artifact: A, consistent_with: tuple[Artifact, ...] = ()) -> A | None:
    """An optional input: the artifact when it is complete and its lineage agrees with the
    (required) artifacts `consistent_with`, else None (a stale one is left out, with a warning)."""
    if artifact.bind(store) is None:
        return None
    try:
        check_lineage(store, [*consistent_with, artifact])
    except ConfigError as error:
        log.warning("leaving out %s: %s", artifact.url, str(error).removeprefix("input "))
        return None
    return artifact


def require(store: Store, *wanted: Artifact) -> None:
    """Bind a stage's inputs to the store, refusing in one line a missing one (naming the stage
    that makes it) or a broken lineage: an input made from another version of an artifact than the
    one published now, checked up the whole chain of what each input was made from (the scores'
    factors' model included)."""
    for artifact in wanted:
        if artifact.bind(store) is None:
            raise ConfigError(f"missing input {store.url(artifact.relative)} (no {SUCCESS}): run the "
                              f"{artifact.maker} stage first (python -m jobs {artifact.maker}) with the same "
                              "ARTIFACTS_URI")
    check_lineage(store, wanted)


def refuse_replacing(store: Store, output: Artifact, stage: str, force: bool, setting: str) -> None:
    """An output another stage made (a query's scores, compute_scores' scores) is replaced only when
    FORCE says so: the two publish the same kind under a name the user chooses (`setting`, NAME=value)."""
    there = type(output)(relative=output.relative).bind(store)
    if there is not None and not force and there.made_by != stage:
        raise ConfigError(f"{setting}: {there.url} holds the {there.made_by} stage's output; publish the {stage} "
                          f"stage's under another {setting.split('=')[0]}, or FORCE=true to replace it")


def check_members(model: Model, data: TrainData, factors: Factors, numbers: list[int]) -> None:
    """An ensemble's members `numbers` exist (their model, data and factors, each chain checked by
    `require`) and belong with the model (bound): each trained on the same examples by the same
    recipe, from the same MODEL, with the training seed the model's plus its number, and fitted
    with the same settings as `factors`."""
    remedy = "rerun the ensemble stage (python -m jobs ensemble) with FORCE=true"
    members = [tuple(in_member(mine, number) for mine in (model, data, factors)) for number in numbers]
    require(model.store, *(part for member in members for part in member))
    for number, (member_model, member_data, member_factors) in zip(numbers, members):
        seed = model.settings.model_seed + number
        if _examples(member_data) != _examples(data):
            raise ConfigError(f"ensemble member {number} was trained on other examples ({member_data.url}) than "
                              f"{data.url}: {remedy}")
        if (member_model.settings.model_seed != seed
                or _without(member_model.manifest.settings, "training_seed")
                != _without(model.manifest.settings, "training_seed")):
            raise ConfigError(f"ensemble member {number} ({member_model.url}) was not trained as {model.url} was, with "
                              f"training seed {seed}: {remedy}")
        if member_model.source_digest != model.source_digest:
            raise ConfigError(f"ensemble member {number} ({member_model.url}) was fine-tuned from another "
                              f"MODEL={model.source} than {model.url} was (it has changed since): {remedy}")
        if member_factors.manifest.settings != factors.manifest.settings:
            raise ConfigError(f"ensemble member {number}'s factors {member_factors.url} were fitted otherwise than "
                              f"{factors.url}: {remedy}")


def _examples(data: TrainData) -> dict:
    """The files of the tokenized examples, less datasets' state.json (a random fingerprint)."""
    return _without(data.manifest.files or {}, "state.json")


def _without(values: dict, key: str) -> dict:
    return {name: value for name, value in values.items() if name != key}


def check_lineage(store: Store, artifacts: tuple[Artifact, ...] | list[Artifact]) -> None:
    """Every artifact these were made from, and what those were made from, must be the version
    published now (or no longer published). Of several breaks, the one nearest the start of the
    chain is reported: rerunning its stage is the first step of the repair."""
    current: dict[str, Artifact | None] = {artifact.relative: artifact for artifact in artifacts}
    depth: dict[str, int] = {}

    def upstream(artifact: Artifact) -> list[tuple[str, str]]:
        tree = MEMBER_PREFIX.match(artifact.relative)  # a member's inputs are paths within its tree
        prefix = tree.group() if tree else ""
        return [(prefix + path, recorded) for path, recorded in artifact.manifest.inputs.items() if kind_of(path)]

    def depth_of(relative: str, seen: frozenset = frozenset()) -> int:
        if relative not in depth:
            artifact = current.get(relative)
            parents = [path for path, _ in upstream(artifact)] if artifact else []
            depth[relative] = 1 + max((depth_of(path, seen | {relative}) for path in parents if path not in seen),
                                      default=-1)
        return depth[relative]

    breaks, queue = [], list(artifacts)
    while queue:
        artifact = queue.pop()
        for path, recorded in upstream(artifact):
            if path not in current:
                current[path] = at(store, path)
                if current[path] is not None:
                    queue.append(current[path])
            now = current[path]
            if now is not None and now.fingerprint != recorded:
                breaks.append((artifact, now))
    if breaks:
        made, source = min(breaks, key=lambda pair: depth_of(pair[0].relative))
        raise ConfigError(f"input {made.url} was made from another {source.url} than the one there now: rerun the "
                          f"{made.made_by} stage with FORCE=true")


def fingerprints(*artifacts: Artifact) -> dict[str, str]:
    """What a manifest records of its inputs: each one's path and fingerprint."""
    return {artifact.relative: artifact.fingerprint for artifact in artifacts}


def digest_of(content: object) -> str:
    """A content digest of a JSON-able value (an external input read, the prompts scored)."""
    import hashlib

    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
