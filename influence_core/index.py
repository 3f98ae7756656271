"""A gradient index of the training examples, and queries against it.

The index holds each training example's loss gradient over the tracked modules, projected per
module through two random matrices (LoGra, Choe et al. 2024): a module's per-example gradient is
the sum over tokens of output gradient x input (outputs x inputs), so projecting both sides before
their outer product, (P_out g_t)(P_in a_t)^T summed over t, gives P_out G P_in^T without ever forming
G. Entries of P are N(0, 1/k), so E[P^T P] = I and dot products of projected gradients estimate
those of the gradients themselves; at PROJECTION_DIM 0 (or at least a side's size) that side is
not projected and the dot products are exact.

The index holds raw gradients, not preconditioned ones. The preconditioner F^-1 of every strategy
is symmetric, so score(q, t) = <F^-1 g_q, g_t>: a query preconditions its own gradients with the
factors and damping it is asked with (Kronfluence's own preconditioning, the very code
compute_scores runs), projects them with the index's matrices and takes dot products with the
stored rows, shard by shard. One index serves every factors and damping choice; building it needs
no factors at all.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from datasets import Dataset
from torch import nn

from influence_core.data import PadCollator


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


@dataclass(frozen=True)
class Projection:
    """The random projections of an index: per tracked module, two matrices drawn from `seed` and
    the module's name, so the query side draws the very same ones."""

    modules: tuple[ModuleProjection, ...]
    seed: int

    @classmethod
    def plan(cls, model: nn.Module, names: Sequence[str], dim: int, seed: int) -> Projection:
        """Projections to `dim` per side (0: none) of the named Linear modules of `model`."""
        modules = []
        for name in names:
            module = model.get_submodule(name)
            outputs, inputs = module.out_features, module.in_features + (module.bias is not None)
            modules.append(ModuleProjection(name, outputs, inputs, min(dim, outputs) if dim else outputs,
                                            min(dim, inputs) if dim else inputs))
        return cls(tuple(modules), seed)

    @property
    def size(self) -> int:
        """Floats stored per training example."""
        return sum(module.size for module in self.modules)

    def to_json(self) -> dict:
        return {"seed": self.seed, "modules": [asdict(module) for module in self.modules]}

    @classmethod
    def from_json(cls, recorded: dict) -> Projection:
        return cls(tuple(ModuleProjection(**module) for module in recorded["modules"]), recorded["seed"])

    def matrix(self, module: ModuleProjection, side: str, device: torch.device) -> torch.Tensor | None:
        """The module's projection of one side ("out" or "in"), k x n; None when not projected."""
        full, k = (module.outputs, module.out_dim) if side == "out" else (module.inputs, module.in_dim)
        if k == full:
            return None
        key = hashlib.blake2b(f"{self.seed}/{module.name}/{side}".encode(), digest_size=7).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(key, "big"))
        return (torch.randn(k, full, generator=generator) / math.sqrt(k)).to(device)

    def project(self, gradients: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full gradients, name -> (n, outputs, inputs), projected and flattened: (n, size)."""
        parts = []
        for module in self.modules:
            gradient = gradients[module.name]
            p_out, p_in = self.matrix(module, "out", gradient.device), self.matrix(module, "in", gradient.device)
            if p_out is not None:
                gradient = torch.einsum("ko,noi->nki", p_out, gradient)
            if p_in is not None:
                gradient = torch.einsum("noi,ki->nok", gradient, p_in)
            parts.append(gradient.reshape(gradient.shape[0], -1))
        return torch.cat(parts, dim=1)


class _Recorder:
    """Forward and backward hooks on the tracked modules that keep each example's projected
    gradient: the inputs projected on the way forward, the output gradients on the way back, and
    their outer product summed over the tokens."""

    def __init__(self, model: nn.Module, projection: Projection, device: torch.device) -> None:
        self.projection, self.gradients = projection, {}
        self.matrices = {module.name: (projection.matrix(module, "out", device),
                                       projection.matrix(module, "in", device)) for module in projection.modules}
        self.handles = [model.get_submodule(module.name).register_forward_hook(self._forward(module.name))
                        for module in projection.modules]

    def _forward(self, name: str):
        p_out, p_in = self.matrices[name]

        def hook(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            activation = inputs[0].detach()
            if module.bias is not None:  # the bias is a weight on a constant input of 1
                activation = torch.cat([activation, activation.new_ones(*activation.shape[:-1], 1)], dim=-1)
            if p_in is not None:
                activation = activation @ p_in.T

            def backward(gradient: torch.Tensor) -> None:
                if p_out is not None:
                    gradient = gradient @ p_out.T
                self.gradients[name] = torch.einsum("bto,bti->boi", gradient, activation).flatten(1)

            output.register_hook(backward)

        return hook

    def take(self) -> torch.Tensor:
        return torch.cat([self.gradients.pop(module.name) for module in self.projection.modules], dim=1)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


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


def index_rows(model: nn.Module, task, examples: Dataset, projection: Projection, pad_token_id: int, batch_size: int,
               dtype: torch.dtype) -> torch.Tensor:
    """Each example's projected training-loss gradient (the task's summed loss), in the order of
    `examples`: (len(examples), projection.size) in `dtype`. Batches are sorted by length (each is
    padded to its longest; an example's gradient depends on it alone)."""
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in examples["input_ids"]]
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])
    collate = PadCollator(pad_token_id)
    rows = torch.empty(len(examples), projection.size, dtype=dtype)
    recorder = _Recorder(model, projection, device)
    try:
        with _activation_gradients_only(model):
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                batch = {key: value.to(device) for key, value in collate([examples[i] for i in chosen]).items()}
                task.compute_train_loss(batch, model).backward()
                rows[chosen] = recorder.take().to("cpu", dtype)
    finally:
        recorder.close()
    return rows


def preconditioned_query_gradients(analyzer, factors_name: str, queries: Dataset, score_args, pad_token_id: int,
                                   batch_size: int) -> dict[str, torch.Tensor]:
    """Each query's measurement gradient preconditioned with the factors `factors_name`, by module:
    name -> (queries, outputs, inputs). Kronfluence's own preconditioning, the first half of
    compute_pairwise_scores (its modules' PRECONDITION_GRADIENT mode), so the factors, damping and
    dtypes act exactly as they do there."""
    from kronfluence.module.tracked_module import ModuleMode
    from kronfluence.module.utils import (
        accumulate_iterations,
        finalize_all_iterations,
        get_tracked_module_names,
        prepare_modules,
        set_factors,
        set_mode,
        update_factor_args,
        update_score_args,
    )
    from kronfluence.utils.constants import ACCUMULATED_PRECONDITIONED_GRADIENT_NAME

    model, task = analyzer.model, analyzer.task
    device = next(model.parameters()).device
    update_factor_args(model=model, factor_args=analyzer.load_factor_args(factors_name))
    update_score_args(model=model, score_args=score_args)
    names = get_tracked_module_names(model=model)
    set_mode(model=model, mode=ModuleMode.PRECONDITION_GRADIENT, tracked_module_names=names, release_memory=True)
    for factor_name, factors in analyzer.load_all_factors(factors_name).items():
        set_factors(model=model, factor_name=factor_name, factors=factors, clone=True)
    prepare_modules(model=model, tracked_module_names=names, device=device)
    collate = PadCollator(pad_token_id)
    for start in range(0, len(queries), batch_size):
        batch = {key: value.to(device) for key, value in
                 collate([queries[i] for i in range(start, min(start + batch_size, len(queries)))]).items()}
        model.zero_grad(set_to_none=True)
        task.compute_measurement(batch=batch, model=model).backward()
        accumulate_iterations(model=model, tracked_module_names=names)
    gradients = {}
    for name, module in model.named_modules():
        if name in names:
            stored = module.storage[ACCUMULATED_PRECONDITIONED_GRADIENT_NAME]
            # A low-rank query gradient (QUERY_GRADIENT_RANK) is kept as its two factors.
            gradients[module.name] = (stored[0] @ stored[1] if isinstance(stored, list) else stored).float()
    model.zero_grad(set_to_none=True)
    finalize_all_iterations(model=model, tracked_module_names=names)
    set_mode(model=model, mode=ModuleMode.DEFAULT, release_memory=True)
    return gradients
