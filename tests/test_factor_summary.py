"""inspect_factors: summary.json's spectrum statistics and the plots of the chosen layer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from influence_core.modeling import mlp_module_names
from influence_core.reports import spectrum_statistics

FACTORS = "influence/factors_tiny_lm_factors"
PLOTS = "reports/factors_tiny_lm_factors"


def test_spectrum_statistics_of_known_spectra():
    flat = spectrum_statistics(torch.tensor([4.0, 4.0, 4.0, 4.0]))
    assert flat["effective_rank"] == pytest.approx(4.0) and flat["condition_number"] == pytest.approx(1.0)
    single = spectrum_statistics(torch.tensor([0.0, 3.0, 0.0]))
    assert single["effective_rank"] == pytest.approx(1.0) and single["condition_number"] is None
    mixed = spectrum_statistics(torch.tensor([[1.0, 8.0], [2.0, 4.0]]))
    assert mixed["top_eigenvalues"] == [8.0, 4.0, 2.0, 1.0] and mixed["condition_number"] == pytest.approx(8.0)
    assert 1.0 < mixed["effective_rank"] < 4.0


def test_summary_covers_every_tracked_module(demo_run):
    summary = json.loads((demo_run / PLOTS / "summary.json").read_text())
    assert summary["strategy"] == "ekfac" and summary["layer_plotted"] == 3
    assert list(summary["modules"]) == [name.removeprefix("transformer.") for name in mlp_module_names(4)]
    eigenvalues = load_file(str(demo_run / FACTORS / "activation_eigenvalues.safetensors"))
    lambdas = load_file(str(demo_run / FACTORS / "lambda_matrix.safetensors"))
    counts = load_file(str(demo_run / FACTORS / "num_lambda_processed.safetensors"))
    for module, entry in summary["modules"].items():
        full = f"transformer.{module}"
        expected = torch.sort(eigenvalues[full].double(), descending=True).values[:10]
        assert entry["activation_covariance"]["top_eigenvalues"] == pytest.approx(expected.tolist(), rel=1e-6)
        assert entry["activation_covariance"]["count"] == eigenvalues[full].numel()
        for spectrum in ("activation_covariance", "gradient_covariance", "lambda"):
            stats = entry[spectrum]
            assert 1.0 <= stats["effective_rank"] <= stats["count"]
            assert stats["condition_number"] is None or stats["condition_number"] >= 1.0
        true_lambda = lambdas[full].double() / counts[full].double()
        assert entry["lambda"]["count"] == lambdas[full].numel()
        assert entry["lambda"]["top_eigenvalues"][0] == pytest.approx(float(true_lambda.max()), rel=1e-6)
        assert entry["heuristic_damping"] == pytest.approx(0.1 * float(true_lambda.mean()), rel=1e-6)
        # Conditioned with the damping the scores add (DAMPING_FACTOR, 1e-8 by default), not the heuristic.
        assert summary["damping_factor"] == 1e-8
        smallest = max(float(true_lambda.min()), 0.0)
        assert entry["damped_condition_number"] == pytest.approx((float(true_lambda.max()) + 1e-8) / (smallest + 1e-8),
                                                                 rel=1e-6)


def test_plots_of_the_chosen_layer(demo_run):
    names = sorted(path.name for path in (demo_run / PLOTS).glob("*.png"))
    assert names == sorted(f"{kind}_h.3.mlp.{module}.png" for kind in ("covariance", "eigenvalues", "lambda_matrix")
                           for module in ("c_fc", "c_proj"))
    manifest = json.loads((demo_run / PLOTS / "_SUCCESS").read_text())
    assert sorted(manifest["plots"]) == names and "summary.json" in manifest["files"]


def test_the_documented_damping_default_is_kronfluence_s(demo_run):
    """The docs and --help call 1e-8 the default of Kronfluence's ScoreArguments, and the
    heuristic 0.1 x the mean eigenvalue its fallback when the damping is None."""
    from kronfluence.arguments import ScoreArguments
    from kronfluence.utils.constants import HEURISTIC_DAMPING_SCALE

    from influence_core.settings import DEFAULT_DAMPING

    assert ScoreArguments().damping_factor == DEFAULT_DAMPING and HEURISTIC_DAMPING_SCALE == 0.1


def test_nothing_in_the_repository_cites_a_file_outside_it():
    import subprocess

    from tests.conftest import ROOT

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = "../" + "shared"  # the folder beside the checkout, spelt so that this file does not cite it
    citing = [name for name in files
              if (ROOT / name).is_file() and outside in (ROOT / name).read_text(errors="replace")]
    assert citing == [], citing
