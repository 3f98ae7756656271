"""A gradient index of the training examples, and queries against it.

Influence is score(q, t) = g_q^T (F + damping)^-1 g_t, with F the curvature the factors
approximate. Every strategy Kronfluence fits preconditions a module's gradient G (outputs x
inputs, a column for the bias included) the same way: rotate it into the factors' eigenbases
(EK-FAC, K-FAC; no rotation for diagonal and identity), divide it entry by entry by
(eigenvalue + damping), rotate back. Splitting that division evenly between the two sides,

    score(q, t) = <W(G_q), W(G_t)>,   W(G) = (Q_out^T G Q_in) * (eigenvalue + damping)^-1/2,

so the index stores each training example's whitened gradient W(G_t), and a query whitens its own
gradient the same way and takes plain dot products: exact when nothing is projected.

Why whitened, and not raw gradients that would serve every factors and damping choice: at the
small damping the scores use, (F + damping)^-1 lives in the directions of near-zero curvature,
where training gradients are small, and a random projection of raw gradients loses exactly those
(docs/guides/ask-new-questions.md, "Why whitened", has the figures).
An index therefore belongs to one set of factors and one damping, which its manifest records.

An example's row holds at most INDEX_DIM numbers, whatever the model's size: the budget is shared
equally among the tracked modules (`shares`: a module smaller than its share is kept whole and
leaves the rest to the others), and each module's whitened gradient is projected to its share by
two random matrices with orthonormal rows (scaled so that E[P^T P] = I): P_out W P_in^T, outputs x
inputs down to k_out x k_in, as square as the module allows. At INDEX_DIM 0 every module is kept
whole (exact scores).

The gradients are those compute_scores preconditions: the forward pass and the loss run under the
autocast AMP_DTYPE names, as Kronfluence runs them (the backward follows the forward's dtypes); the
whitening is float32 arithmetic. Rows that would not be finite in the dtype they are stored in
(float16 ends at 65504, and whitening divides by sqrt(eigenvalue + damping)) are refused, not
stored as inf.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn

from influence_core.data import PadCollator
from influence_core.errors import ConfigError
from influence_core.settings import BuildIndexSettings, IndexSettings, QueryIndexSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleProjection:
    """How one tracked module's gradients are stored: its gradient is outputs x inputs (a column
    for the bias included), projected to out_dim x in_dim."""

    name: str
    outputs: int
    inputs: int
    out_dim: int
    in_dim: int

    @property
    def size(self) -> int:
        return self.out_dim * self.in_dim


def module_size(module: nn.Module) -> tuple[int, int]:
    """A Linear module's gradient as Kronfluence lays it out: outputs x inputs, a column for the bias."""
    return module.out_features, module.in_features + (module.bias is not None)


def shares(sizes: Sequence[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """Each module's projected sides (out_dim, in_dim) for modules of `sizes` (outputs, inputs) within
    `budget` numbers in all (0: every module whole). Equal shares, the smallest modules first so
    that what a module kept whole does not use passes to the larger ones; within its share a module's
    sides are as square as its shape allows (docs/results/index_budget.md measures the budget)."""
    if not budget:
        return list(sizes)
    sides: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    left = budget
    order = sorted(range(len(sizes)), key=lambda i: sizes[i][0] * sizes[i][1])
    for done, i in enumerate(order):
        share = max(1, left // (len(order) - done))
        outputs, inputs = sizes[i]
        side = math.isqrt(share)
        if outputs * inputs <= share:
            sides[i] = (outputs, inputs)
        elif outputs <= side:
            sides[i] = (outputs, min(inputs, share // outputs))
        elif inputs <= side:
            sides[i] = (min(outputs, share // inputs), inputs)
        else:
            sides[i] = (side, side)
        left -= sides[i][0] * sides[i][1]
    return sides


@dataclass(frozen=True)
class Projection:
    """The random projections of an index: per tracked module, two matrices drawn from `seed` and
    the module's name, so the query side draws the very same ones."""

    modules: tuple[ModuleProjection, ...]
    seed: int

    @classmethod
    def plan(cls, model: nn.Module, names: Sequence[str], budget: int, seed: int) -> Projection:
        """Projections of the named Linear modules of `model` to `budget` numbers in all (0: none)."""
        sizes = [module_size(model.get_submodule(name)) for name in names]
        return cls(tuple(ModuleProjection(name, outputs, inputs, out_dim, in_dim) for name, (outputs, inputs), (
            out_dim, in_dim) in zip(names, sizes, shares(sizes, budget))), seed)

    @property
    def size(self) -> int:
        """Numbers stored per training example."""
        return sum(module.size for module in self.modules)

    def to_json(self) -> dict:
        return {"seed": self.seed, "modules": [asdict(module) for module in self.modules]}

    @classmethod
    def from_json(cls, recorded: dict) -> Projection:
        return cls(tuple(ModuleProjection(**module) for module in recorded["modules"]), recorded["seed"])

    def matrix(self, module: ModuleProjection, side: str) -> torch.Tensor | None:
        """The module's projection of one side ("out" or "in"), k x n with orthonormal rows times
        sqrt(n / k); None when the side is kept whole. Orthonormal rather than Gaussian rows: at k
        near n a Gaussian matrix's P^T P is far from the identity, an orthonormal one's is not."""
        full, k = (module.outputs, module.out_dim) if side == "out" else (module.inputs, module.in_dim)
        if k == full:
            return None
        key = hashlib.blake2b(f"{self.seed}/{module.name}/{side}".encode(), digest_size=7).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(key, "big"))
        orthonormal, _ = torch.linalg.qr(torch.randn(full, k, generator=generator, dtype=torch.float64))
        return (orthonormal.T * math.sqrt(full / k)).float()


@dataclass
class ModuleWhitening:
    """One module's preconditioner split in halves: the eigenbases (None: no rotation) and the
    entrywise (eigenvalue + damping)^-1/2 (None: identity strategy)."""

    out_basis: torch.Tensor | None
    in_basis: torch.Tensor | None
    scale: torch.Tensor | None


def whitening(analyzer, factors_name: str, score_args) -> dict[str, ModuleWhitening]:
    """The whitening of every tracked module from the factors `factors_name`, prepared by
    Kronfluence's own code for the strategy (FactorConfig.prepare: the lambda matrix normalised,
    the damping added, as compute_scores uses them), so the index inverts exactly what it does."""
    from kronfluence.factor.config import FactorConfig
    from kronfluence.utils.constants import (
        ACTIVATION_EIGENVECTORS_NAME,
        GRADIENT_EIGENVECTORS_NAME,
        LAMBDA_MATRIX_NAME,
    )

    strategy = FactorConfig.CONFIGS[analyzer.load_factor_args(factors_name).strategy]
    factors = analyzer.load_all_factors(factors_name)
    names = sorted({name for by_module in factors.values() for name in by_module})
    modules = {}
    for name in names:
        storage = {factor: by_module[name] for factor, by_module in factors.items() if name in by_module}
        strategy.prepare(storage, score_args, torch.device("cpu"))
        reciprocal = storage.get(LAMBDA_MATRIX_NAME)  # 1 / (eigenvalue + damping), once prepared
        out_basis, in_basis = storage.get(GRADIENT_EIGENVECTORS_NAME), storage.get(ACTIVATION_EIGENVECTORS_NAME)
        modules[name] = ModuleWhitening(
            None if out_basis is None else out_basis.float(), None if in_basis is None else in_basis.float(),
            None if reciprocal is None else reciprocal.float().squeeze(0).sqrt())
    return modules


class _Recorder:
    """Forward and backward hooks on the tracked modules that keep each example's whitened,
    projected gradient: the inputs rotated on the way forward, the output gradients on the way
    back, their outer product summed over the tokens, scaled entry by entry, then projected. Without
    a scale (identity strategy) the projections fold into the sides (LoGra: P_out G P_in^T without
    forming G)."""

    def __init__(self, model: nn.Module, projection: Projection, whitened: dict[str, ModuleWhitening],
                 device: torch.device) -> None:
        self.projection, self.gradients, self.sides = projection, {}, {}
        for module in projection.modules:
            white = whitened.get(module.name, ModuleWhitening(None, None, None))
            p_out, p_in = projection.matrix(module, "out"), projection.matrix(module, "in")
            # Each side: the rotation (n x n), then, when nothing scales in between, the projection.
            out_side, in_side = white.out_basis, white.in_basis
            late = white.scale is not None
            if not late:
                out_side = _then(out_side, p_out)
                in_side = _then(in_side, p_in)
            self.sides[module.name] = tuple(None if m is None else m.to(device) for m in (
                out_side, in_side, white.scale, p_out if late else None, p_in if late else None))
        self.handles = [model.get_submodule(module.name).register_forward_hook(self._forward(module.name))
                        for module in projection.modules]

    def _forward(self, name: str):
        out_side, in_side, scale, p_out, p_in = self.sides[name]

        def hook(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            activation = inputs[0].detach().float()
            if module.bias is not None:  # the bias is a weight on a constant input of 1 (Kronfluence's layout)
                activation = torch.cat([activation, activation.new_ones(*activation.shape[:-1], 1)], dim=-1)
            if in_side is not None:
                with _no_autocast(activation):  # the forward runs under AMP_DTYPE; the whitening stays float32
                    activation = activation @ in_side

            def backward(gradient: torch.Tensor) -> None:
                with _no_autocast(gradient):
                    gradient = gradient.float()
                    if out_side is not None:
                        gradient = gradient @ out_side
                    rows = torch.einsum("bto,bti->boi", gradient, activation)
                    if scale is not None:
                        rows = rows * scale
                        if p_out is not None:
                            rows = torch.einsum("ko,boi->bki", p_out, rows)
                        if p_in is not None:
                            rows = torch.einsum("boi,ki->bok", rows, p_in)
                self.gradients[name] = rows.flatten(1)

            output.register_hook(backward)

        return hook

    def take(self) -> torch.Tensor:
        return torch.cat([self.gradients.pop(module.name) for module in self.projection.modules], dim=1)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _no_autocast(tensor: torch.Tensor) -> torch.autocast:
    """Autocast off on the tensor's device: Kronfluence takes the activations and output gradients
    as the autocast passes made them but multiplies them in its own dtypes, as the hooks do."""
    return torch.autocast(tensor.device.type, enabled=False)


def _then(basis: torch.Tensor | None, projection: torch.Tensor | None) -> torch.Tensor | None:
    """Rotate (a row vector times basis), then project (times projection^T)."""
    if projection is None:
        return basis
    return projection.T if basis is None else basis @ projection.T


@contextmanager
def _activation_gradients_only(model: nn.Module) -> Iterator[None]:
    """The backward pass computes the gradients of the activations only (the hooks need those), not
    of the weights: the weights do not require gradients, the input embeddings' output does."""
    required = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    model.requires_grad_(False)
    handle = model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output.requires_grad_())
    try:
        yield
    finally:
        handle.remove()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(required[name])


def gradient_rows(model: nn.Module, loss, examples: Dataset, projection: Projection,
                  whitened: dict[str, ModuleWhitening], pad_token_id: int, batch_size: int,
                  dtype: torch.dtype = torch.float32, amp_dtype: torch.dtype | None = None,
                  what: str = "training example", first: int = 0) -> torch.Tensor:
    """Each example's whitened, projected gradient of `loss(batch, model)` (a summed loss: the
    task's training loss for the index, its measurement for the queries), in the order of
    `examples`: (len(examples), projection.size) in `dtype`. Batches are sorted by length (each is
    padded to its longest; an example's gradient depends on it alone). `amp_dtype` is the autocast
    of the forward pass (runtime.autocast_dtype(AMP_DTYPE); None: none), as compute_scores' passes
    run, so that the index and the exact rescoring see the same gradients. A row that is not finite,
    or would not be in `dtype`, is refused (ConfigError) naming example i as `what` {first + i}."""
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in examples["input_ids"]]
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])
    collate = PadCollator(pad_token_id)
    rows = torch.empty(len(examples), projection.size, dtype=dtype)
    recorder = _Recorder(model, projection, whitened, device)
    model.eval()
    try:
        with _activation_gradients_only(model):
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                batch = {key: value.to(device) for key, value in collate([examples[i] for i in chosen]).items()}
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    total = loss(batch, model)
                total.backward()  # outside autocast, as Kronfluence's (its ops run in the forward's dtypes)
                rows[chosen] = _stored(recorder.take(), dtype, amp_dtype,
                                       [f"{what} {first + i}" for i in chosen]).to("cpu")
    finally:
        recorder.close()
    return rows


def _stored(block: torch.Tensor, dtype: torch.dtype, amp_dtype: torch.dtype | None,
            names: list[str]) -> torch.Tensor:
    """A batch's float32 rows in `dtype`, refused in one line where a row is not finite, or would
    not be once cast: an inf or NaN row in the index scores every query as inf or NaN, silently."""
    finite = torch.isfinite(block).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        value = float(block[row][~torch.isfinite(block[row])][0])
        if amp_dtype is not None:  # autocast's narrower arithmetic is the first suspect
            amp = str(amp_dtype).removeprefix("torch.")
            raise ConfigError(f"AMP_DTYPE: {names[row]}'s whitened gradient is not finite ({value}) with the passes "
                              f"autocast to {amp}; run with AMP_DTYPE=float32, or check the model and its factors "
                              "(python -m jobs inspect_factors)")
        raise ConfigError(f"DAMPING_FACTOR: {names[row]}'s whitened gradient is not finite ({value}) in float32: the "
                          "model's gradient or its factors hold inf or NaN, or the damping is too small to invert "
                          "the factors; use a larger DAMPING_FACTOR, or check the model and its factors (python -m "
                          "jobs inspect_factors)")
    cast = block.to(dtype)
    fits = torch.isfinite(cast).all(dim=1)
    if not bool(fits.all()):
        row = int((~fits).nonzero()[0])
        name, largest = str(dtype).removeprefix("torch."), torch.finfo(dtype).max
        wider = " or ".join(other for other in ("bfloat16", "float32")
                            if torch.finfo(getattr(torch, other)).max > largest)
        raise ConfigError(f"INDEX_DTYPE={name}: {names[row]}'s whitened gradient reaches "
                          f"{float(block[row].abs().max()):.3g}, past {name}'s largest {largest:.6g}; build with "
                          f"INDEX_DTYPE={wider}, or a larger DAMPING_FACTOR")
    return cast


# ---- building the index and querying it ----------------------------------------------------------

def _device() -> torch.device:
    """This process's GPU, else the CPU."""
    from influence_core.runtime import local_gpu

    return local_gpu() if torch.cuda.is_available() else torch.device("cpu")


def prepared(model_dir: Path, work_dir: Path,
             settings: IndexSettings) -> tuple[nn.Module, Any, dict[str, ModuleWhitening]]:
    """The model (on the device), its tokenizer and the whitening of the factors FACTORS_NAME
    (which lie at <work_dir>/influence/factors_<name>, as Kronfluence looks for them)."""
    from transformers import AutoTokenizer

    from influence_core.factors import build_analyzer
    from influence_core.modeling import load_model
    from influence_core.scores import score_arguments

    analyzer = build_analyzer(model_dir, work_dir, settings.factors_name)
    whitened = whitening(analyzer, settings.factors_name, score_arguments(settings))
    del analyzer  # its copy of the model is Kronfluence's, wrapped; the hooks go on a plain one
    return load_model(model_dir).to(_device()), AutoTokenizer.from_pretrained(model_dir), whitened


def build_shards(model_dir: Path, train_dir: Path, work_dir: Path, settings: BuildIndexSettings, local: Path,
                 after_shard: Callable[[], None] = lambda: None) -> tuple[Projection, int]:
    """Write the index's shards that `local` does not hold yet (this pod's only, with SHARD_INDEX;
    this process's share of them under torchrun), each with its search structure where INDEX_SEARCH
    asks for one (a restored shard without one gets it), calling `after_shard` after each file, and
    its projection.json. Returns the projection and the number of training examples."""
    from safetensors.torch import load_file, save_file

    from influence_core.artifacts import Index
    from influence_core.factors import factors_dir, load_training_examples, tracked_modules
    from influence_core.runtime import autocast_dtype, is_main_process, rank, world_size
    from influence_core.search import resolve, search_rows, write_search
    from influence_core.storage import partial_name
    from influence_core.tasks import TASKS

    model, tokenizer, whitened = prepared(model_dir, work_dir, settings)
    names = tracked_modules(factors_dir(work_dir, settings.factors_name))
    projection = Projection.plan(model, names, settings.index_dim, settings.seed)
    examples = load_training_examples(train_dir)
    stored = projection.size * getattr(torch, settings.index_dtype).itemsize
    search = resolve(settings.index_search, len(examples), stored)
    local.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        (local / Index.PROJECTION).write_text(json.dumps(
            {**projection.to_json(), "index_dim": settings.index_dim, "bytes_per_example": stored,
             "search": search}, indent=2))
    size = settings.index_shard_size
    shards = Index.shard_count(len(examples), size)
    pod = [n for n in range(shards) if settings.shard is None or n % settings.index_partitions == settings.shard]
    mine = pod[rank()::world_size()]  # a pod's torchrun processes (a GPU each) share its shards
    loss = TASKS["language_modeling"](names).compute_train_loss  # every task trains on the same loss
    for done, number in enumerate(mine, 1):
        path, first = local / Index.shard(number), number * size
        count = min(size, len(examples) - first)
        rows = None
        if _shard_rows(path) != count:  # else restored from an earlier run
            rows = gradient_rows(model, loss, examples.select(range(first, first + count)), projection, whitened,
                                 tokenizer.pad_token_id, settings.train_batch_size,
                                 getattr(torch, settings.index_dtype), amp_dtype=autocast_dtype(settings.amp_dtype),
                                 first=first)
            # A name Output.sync never stages: the main process syncs while the others still write theirs.
            partial = path.with_name(partial_name(path.name))
            save_file({Index.ROWS: rows.contiguous()}, str(partial), metadata={"first": str(first)})
            partial.replace(path)
            log.info("index shard %d (%d of %d here): examples %d-%d", number, done, len(mine), first,
                     first + count - 1)
            after_shard()  # the costly part staged before its search structure is built
        # A restored shard's structure is built again where it was not restored with it (a build killed in between).
        if search is not None and (rows is not None or search_rows(local / Index.search(number)) != count):
            write_search(local / Index.search(number), load_file(str(path))[Index.ROWS] if rows is None else rows,
                         search)
            log.info("index shard %d's search structure (%s)", number, search["structure"])
            after_shard()
    return projection, len(examples)


def _shard_rows(path: Path) -> int | None:
    """The rows of a shard file, None when there is none (or it cannot be read)."""
    from safetensors import safe_open

    from influence_core.artifacts import Index

    try:
        with safe_open(str(path), "pt") as shard:
            return shard.get_slice(Index.ROWS).get_shape()[0]
    except Exception:  # noqa: BLE001 - missing or unreadable: built again
        return None


def query_rows(model: nn.Module, tokenizer, queries: Dataset, projection: Projection,
               whitened: dict[str, ModuleWhitening], task: str, names: Sequence[str], batch_size: int,
               amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The queries' measurement gradients, whitened and projected as the index's rows are, under
    the autocast `amp_dtype` (as compute_scores measures them)."""
    from influence_core.tasks import TASKS

    measure = TASKS[task](list(names)).compute_measurement
    return gradient_rows(model, measure, queries, projection, whitened, tokenizer.pad_token_id, batch_size,
                         amp_dtype=amp_dtype, what="prompt", first=1)  # prompts are numbered from 1, as the reports


def score_shards(queries: torch.Tensor, shards: Iterable[Path], chunk: int = 256) -> torch.Tensor:
    """Dot products of the query rows with every row of the shards, read one at a time (memory-
    mapped, `chunk` rows at a time), in order: queries x training examples."""
    from safetensors import safe_open

    from influence_core.artifacts import Index

    device, parts = _device(), []
    queries = queries.to(device, torch.float32)
    for path in shards:
        with safe_open(str(path), "pt") as shard:
            rows = shard.get_slice(Index.ROWS)
            count = rows.get_shape()[0]
            for start in range(0, count, chunk):
                block = rows[start:min(start + chunk, count)].to(device, torch.float32)
                parts.append((queries @ block.T).cpu())
    return torch.cat(parts, dim=1)


def prompt_rows(model_dir: Path, work_dir: Path, recorded: dict, prompts: list,
                settings: QueryIndexSettings) -> tuple[Dataset, torch.Tensor]:
    """The prompts tokenized, and their rows made as the index's were (its projection as `recorded`);
    the model is not kept."""
    from transformers import AutoConfig

    from influence_core.data import tokenize_prompts
    from influence_core.factors import factors_dir, tracked_modules
    from influence_core.runtime import autocast_dtype

    context = AutoConfig.from_pretrained(model_dir).max_position_embeddings
    model, tokenizer, whitened = prepared(model_dir, work_dir, settings)
    queries = tokenize_prompts(prompts, tokenizer, context)
    names = tracked_modules(factors_dir(work_dir, settings.factors_name))
    rows = query_rows(model, tokenizer, queries, Projection.from_json(recorded), whitened, settings.task, names,
                      settings.query_batch_size or len(prompts), autocast_dtype(settings.amp_dtype))
    return queries, rows


class Rescored(list):
    """The examples scored again exactly (Kronfluence), in corpus order; `search`, how the index was
    searched (INDEX_SEARCH as built: "exact" or the structure), and `refined`, the examples whose
    index scores come from their full rows (None: every example's; the others hold the search's
    estimates)."""

    def __init__(self, examples: Iterable[int] = (), search: str = "exact", refined: list[int] | None = None):
        super().__init__(examples)
        self.search, self.refined = search, refined


def index_scores(rows: torch.Tensor, shards: Sequence[str], fetch: Callable[[str], Path], recorded: dict,
                 settings: QueryIndexSettings) -> tuple[torch.Tensor, list[int] | None]:
    """The query rows' scores against the index (its shards named in order, each file by `fetch`):
    an exact index's every row scanned; else its search structures searched, then each prompt's
    SEARCH_CANDIDATES (at least RERANK_TOP_K) highest and lowest scored from their full rows
    (influence_core.search). Queries x training examples, and those refined (None: all exact)."""
    from influence_core.artifacts import Index
    from influence_core.search import candidates, exact_scores, search_scores

    search = recorded.get("search")
    if search is None:
        return score_shards(rows, (fetch(name) for name in shards)), None
    scores, starts = search_scores(rows, (fetch(Index.search(number)) for number in range(len(shards))))
    refined = candidates(scores, max(settings.search_candidates, settings.rerank_top_k))
    scores[:, refined] = exact_scores(rows, refined, starts, lambda number: fetch(shards[number]))
    log.info("searched %d examples (%s); %d candidates scored from their full rows", scores.shape[1],
             search["structure"], len(refined))
    return scores, refined


def answer(model_dir: Path, train_dir: Path, work_dir: Path, shards: Sequence[str], fetch: Callable[[str], Path],
           recorded: dict, prompts: list, settings: QueryIndexSettings) -> tuple[torch.Tensor, Rescored]:
    """The prompts scored against the index (its shards named in order, each of its files by `fetch`,
    its projection as `recorded`; `index_scores`), then each prompt's RERANK_TOP_K best candidates
    (among those refined, with a search) scored again exactly: prompts x training examples, and the
    examples whose scores are exact (in corpus order)."""
    from influence_core.factors import load_training_examples
    from influence_core.scores import rescore

    queries, rows = prompt_rows(model_dir, work_dir, recorded, prompts, settings)
    scores, refined = index_scores(rows, shards, fetch, recorded, settings)
    search = (recorded.get("search") or {}).get("structure", "exact")
    if not settings.rerank_top_k:
        return scores, Rescored([], search, refined)
    pool = scores if refined is None else scores[:, refined]  # with a search, among those of exact index scores
    best = torch.topk(pool, min(settings.rerank_top_k, pool.shape[1]), dim=1).indices.flatten().tolist()
    candidates = sorted(set(best) if refined is None else {refined[i] for i in best})
    log.info("scoring the %d candidates of %d prompts again exactly", len(candidates), len(prompts))
    examples = load_training_examples(train_dir).select(candidates)
    scores[:, candidates] = rescore(model_dir, examples, queries, settings, work_dir).to(scores.dtype)
    return scores, Rescored(candidates, search, refined)


def write_scores(local: Path, scores: torch.Tensor, asked: list[dict], exact: list[int],
                 settings: QueryIndexSettings) -> Path:
    """The scores in compute_scores' format (Kronfluence's file and key, its score_arguments.json),
    the prompts asked, and which examples were scored exactly (rescored.json: "examples"; with an
    approximate index also which have exact index scores, "refined", the others the search's)."""
    from safetensors.torch import save_file

    from influence_core.artifacts import Scores
    from influence_core.scores import score_arguments

    local.mkdir(parents=True, exist_ok=True)
    save_file({Scores.KEY: scores.float().contiguous()}, str(local / Scores.MATRIX))
    (local / Scores.PROMPTS).write_text(json.dumps(asked, indent=2, ensure_ascii=False))
    arguments = score_arguments(settings, query_gradient_low_rank=settings.query_gradient_rank).to_dict()
    (local / Scores.ARGUMENTS).write_text(json.dumps(arguments, indent=2, default=str))
    search, refined = (exact.search, exact.refined) if isinstance(exact, Rescored) else ("exact", None)
    (local / Scores.RESCORED).write_text(json.dumps({"rerank_top_k": settings.rerank_top_k, "examples": list(exact),
                                                     "search": search, "refined": refined}))
    return local


def print_answer(scores: torch.Tensor, exact: list[int], train_dir: Path, top_k: int) -> None:
    """One prompt's `top_k` most helpful documents, a line each: rank, score (exact or from the
    index), the example's index and its first words. Only those documents' texts are read (the
    data is Arrow, memory-mapped), not the corpus's."""
    from datasets import load_from_disk

    top = torch.topk(scores, min(top_k, len(scores))).indices.tolist()
    texts = load_from_disk(str(train_dir)).select(top)["text"]
    rescored = set(exact)
    print(f"{'rank':>4}  {'score':>11}  {'':5}  {'example':>7}  text")
    for rank, (example, text) in enumerate(zip(top, texts), 1):
        words = " ".join(text.split()[:12])
        print(f"{rank:>4}  {float(scores[example]):>11.4g}  {'exact' if example in rescored else 'index':5}  "
              f"{example:>7}  {words}")
