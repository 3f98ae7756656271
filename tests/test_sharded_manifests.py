"""fit_factors and compute_scores spread over pods (docs/guides/kubernetes.md, "Spread over pods"): Indexed Jobs whose
pods each compute one data partition, and plain Jobs that aggregate, deployed in order by
`make deploy-fit-factors-sharded` and `make deploy-compute-scores-sharded`.

tests/test_manifests.py validates every rendered object (these Jobs too) against the Kubernetes
1.33 schemas and checks every stage Job's variables, commands, security and failure policy. Here:
what the schemas cannot say (the Job API's rules for Indexed Jobs), that each Indexed Job's
completions is the partition count its pods see, that the steps of a stage agree on its settings,
and the make targets' order. The local overlay's Jobs, the sharded ones included, run as containers in
tests/test_image.py (`make test-image`).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from influence_core import settings
from influence_core.errors import ConfigError
from influence_core.factors import PHASES
from tests.test_manifests import (
    K8S,
    MAKE,
    OVERLAYS,
    ROOT,
    STAGE_CONTAINER,
    STAGE_SETTINGS,
    all_stage_jobs,
    copy_k8s,
    kustomize,
    partial,
    pod_spec,
    render,
    resolved_env,
    stage_container,
    stage_jobs,
)

pytestmark = pytest.mark.slow  # kustomize and make as processes

# The make targets and the Jobs they deploy, in order: a stage's own Job comes last and aggregates.
SHARDED_TARGETS = {
    "deploy-fit-factors-sharded": ["fit-factors-covariance", "fit-factors-eigendecomposition", "fit-factors-lambda",
                                   "fit-factors"],
    "deploy-compute-scores-sharded": ["compute-scores-shards", "compute-scores"],
    "deploy-build-index-sharded": ["build-index-shards", "build-index"],
    "deploy-lds": ["lds-retrain", "lds"],
}
PARTITION_JOBS = {"fit-factors-covariance", "fit-factors-lambda", "compute-scores-shards",  # a data partition each
                  "build-index-shards"}  # index shards each
INDEXED = PARTITION_JOBS | {"lds-retrain", "ensemble"}  # a pod per LDS subset; per model of the ensemble
MAX_INDEXED_COMPLETIONS = 100_000  # the Job API's limit when backoffLimitPerIndex is set
PER_INDEX_ENV = ("SHARD_INDEX", "JOB_COMPLETION_INDEX")  # set by Kubernetes (or a user), never by a manifest


def jobs_by_name(objects) -> dict[str, dict]:
    return {job["metadata"]["name"]: job for _, job in all_stage_jobs(objects)}


def stage_of(job: dict) -> str:
    return stage_container(job)["args"][-1]


def load_stage_settings(job: dict, objects, monkeypatch, **extra: str):
    """The settings a pod of `job` loads: the Job's variables (plus `extra`, what Kubernetes adds)."""
    cls = STAGE_SETTINGS[stage_of(job)]
    for name in list(os.environ):
        if name.lower() in cls.model_fields:
            monkeypatch.delenv(name)
    for name, value in {**resolved_env(stage_container(job), objects), **extra}.items():
        if name.lower() in cls.model_fields:
            monkeypatch.setenv(name, value)
    return settings.load_settings(cls, [])


def partitions_seen(loaded) -> int:
    """The data partitions of the phase a pod computes, as the stage's own validation reads them."""
    if isinstance(loaded, settings.FitFactorsSettings):
        assert loaded.factor_phase in ("covariance", "lambda"), loaded.factor_phase
        return getattr(loaded, f"{loaded.factor_phase}_data_partitions")
    if isinstance(loaded, settings.BuildIndexSettings):
        return loaded.index_partitions
    return loaded.score_data_partitions


def make_steps(target: str, overlay: str) -> list[str]:
    """The Jobs `make <target>` deploys, in order, from its dry run (each deploy deletes the old Job,
    applies the new one with what it shares, and waits until it is complete)."""
    dry = subprocess.run([*MAKE, "-n", target, f"OVERLAY={overlay}", "TAG=t"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    steps = re.findall(r"^kubectl delete job/(\S+) --ignore-not-found --wait$", dry.stdout, re.M)
    chunks = re.split(r"^kubectl delete job/\S+ --ignore-not-found --wait$", dry.stdout, flags=re.M)[1:]
    for step, chunk in zip(steps, chunks):
        assert f"kubectl apply -k \"$KDIR\" -l 'app.kubernetes.io/component in (shared,{step})'" in chunk, chunk
        assert f"kubectl wait --for=condition=complete --timeout=60s job/{step}" in chunk, chunk
    return steps


# ==== offline ====

@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_sharded_steps_are_indexed_jobs_and_phases(overlay):
    objects = render(overlay)
    jobs = jobs_by_name(objects)
    steps = {name for names in SHARDED_TARGETS.values() for name in names}
    assert steps <= set(jobs)
    assert {name for name, job in jobs.items() if partial(job)} == steps - {names[-1] for names in
                                                                             SHARDED_TARGETS.values()}
    assert {name for name, job in jobs.items() if job["spec"].get("completionMode") == "Indexed"} == INDEXED
    # The last step is the stage's own Job, the one `make deploy-<stage>` runs alone.
    for names in SHARDED_TARGETS.values():
        assert stage_jobs(objects)[stage_of(jobs[names[-1]])] is jobs[names[-1]]
        assert {stage_of(jobs[name]) for name in names} == {stage_of(jobs[names[-1]])}
    # fit_factors' steps run EK-FAC's phases in Kronfluence's order, the last one aggregating.
    phases = [resolved_env(stage_container(jobs[name]), objects)["FACTOR_PHASE"]
              for name in SHARDED_TARGETS["deploy-fit-factors-sharded"]]
    assert phases == [*PHASES, "all"]
    for name, job in jobs.items():
        env = [entry["name"] for entry in stage_container(job).get("env", [])]
        assert not set(env) & set(PER_INDEX_ENV), name  # the index comes from the Indexed Job


@pytest.mark.parametrize("overlay", ["base", *sorted(OVERLAYS)])
def test_indexed_jobs_run_a_pod_per_partition_their_pods_see(overlay, monkeypatch):
    """completions = parallelism = the phase's data partitions as the stage reads them from the
    ConfigMap; every index is a valid shard and the next one is refused."""
    objects = kustomize(K8S / "base") if overlay == "base" else render(overlay)
    jobs = jobs_by_name(objects)
    expected = {"base": 1, "local": 2, "cloud": 8}[overlay]
    for name in sorted(PARTITION_JOBS):
        job = jobs[name]
        count = partitions_seen(load_stage_settings(job, objects, monkeypatch))
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == count == expected, name
        last = load_stage_settings(job, objects, monkeypatch, JOB_COMPLETION_INDEX=str(count - 1))
        assert last.shard == count - 1
        with pytest.raises(ConfigError, match="out of range"):
            load_stage_settings(job, objects, monkeypatch, JOB_COMPLETION_INDEX=str(count))
    # The aggregating steps take no shard, so they finish the stage.
    for name in ("fit-factors-eigendecomposition", "fit-factors", "compute-scores", "build-index"):
        assert load_stage_settings(jobs[name], objects, monkeypatch).shard is None


def test_a_partition_count_set_in_an_overlay_sets_completions(tmp_path):
    cloud = copy_k8s(tmp_path) / "overlays" / "cloud"
    text = (cloud / "kustomization.yaml").read_text()
    for old, new in (("- COVARIANCE_DATA_PARTITIONS=8", "- COVARIANCE_DATA_PARTITIONS=3"),
                     ("- SCORE_DATA_PARTITIONS=8", "- SCORE_DATA_PARTITIONS=5"),
                     ("- INDEX_PARTITIONS=8", "- INDEX_PARTITIONS=4")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (cloud / "kustomization.yaml").write_text(text)
    jobs = jobs_by_name(kustomize(cloud))
    completions = {name: (jobs[name]["spec"]["completions"], jobs[name]["spec"]["parallelism"])
                   for name in PARTITION_JOBS}
    assert completions == {"fit-factors-covariance": (3, 3), "fit-factors-lambda": (8, 8),
                           "compute-scores-shards": (5, 5), "build-index-shards": (4, 4)}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_lds_retrain_runs_a_pod_per_subset_the_stage_reads(overlay, monkeypatch, tmp_path):
    """completions = LDS_SUBSETS as the lds stage reads it; every index is a subset and the next one
    is refused; the aggregating lds Job takes none. Changing LDS_SUBSETS changes completions."""
    objects = render(overlay)
    jobs = jobs_by_name(objects)
    job = jobs["lds-retrain"]
    count = load_stage_settings(job, objects, monkeypatch).lds_subsets
    assert job["spec"]["completions"] == count == 16
    assert job["spec"]["parallelism"] == {"local": 2, "cloud": count}[overlay]  # CPU pods two at a time
    assert load_stage_settings(job, objects, monkeypatch, JOB_COMPLETION_INDEX=str(count - 1)).subset == count - 1
    with pytest.raises(ConfigError, match="out of range"):
        load_stage_settings(job, objects, monkeypatch, JOB_COMPLETION_INDEX=str(count))
    assert load_stage_settings(jobs["lds"], objects, monkeypatch).subset is None
    copy = copy_k8s(tmp_path)
    env_file = copy / "base" / "settings.env"
    env_file.write_text(env_file.read_text().replace("LDS_SUBSETS=16", "LDS_SUBSETS=5"))
    assert jobs_by_name(kustomize(copy / "overlays" / overlay))["lds-retrain"]["spec"]["completions"] == 5


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_original_flow_needs_no_other_job(overlay, monkeypatch):
    """The original project's steps as Jobs (train, fit-factors, inspect-factors, compute-scores,
    inspect-scores) at the overlay's settings: compute-scores' pod averages no ensemble, so no Job
    but these has to run first (the stages at these settings: tests/test_original_commands.py; every
    Job as a container: tests/test_image.py)."""
    objects = render(overlay)
    jobs = stage_jobs(objects)
    assert {"train", "fit_factors", "inspect_factors", "compute_scores", "inspect_scores"} <= set(jobs)
    assert load_stage_settings(jobs["compute_scores"], objects, monkeypatch).ensemble_seeds == 1


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_ensemble_runs_a_pod_per_model_the_stage_reads(overlay, monkeypatch, tmp_path):
    """completions = ENSEMBLE_SEEDS as the ensemble stage reads it; pod 0 is the model itself (no
    member), every other index one member, and the next one is refused. At the default, one model,
    its one pod has nothing to do."""
    default = jobs_by_name(render(overlay))["ensemble"]
    assert default["spec"]["completions"] == 1
    assert load_stage_settings(default, render(overlay), monkeypatch, JOB_COMPLETION_INDEX="0").members == []
    copy = copy_k8s(tmp_path)
    env_file = copy / "base" / "settings.env"
    env_file.write_text(env_file.read_text().replace("ENSEMBLE_SEEDS=1", "ENSEMBLE_SEEDS=3"))
    objects = kustomize(copy / "overlays" / overlay)
    job = jobs_by_name(objects)["ensemble"]
    assert job["spec"]["completions"] == load_stage_settings(job, objects, monkeypatch).ensemble_seeds == 3
    assert job["spec"]["parallelism"] == {"local": 2, "cloud": 3}[overlay]
    members = [load_stage_settings(job, objects, monkeypatch, JOB_COMPLETION_INDEX=str(index)).members
               for index in range(3)]
    assert members == [[], [1], [2]]
    with pytest.raises(ConfigError, match="out of range"):
        load_stage_settings(job, objects, monkeypatch, JOB_COMPLETION_INDEX="3")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_indexed_jobs_retry_each_partition_and_fail_as_the_stage_jobs(overlay):
    objects = render(overlay)
    jobs = jobs_by_name(objects)
    whole = stage_jobs(objects)["fit_factors"]["spec"]
    for name, job in jobs.items():
        spec = job["spec"]
        # The Job API's rules (batch/v1, Kubernetes 1.33) that its schema does not express.
        actions = {rule["action"] for rule in spec.get("podFailurePolicy", {}).get("rules", [])}
        if "backoffLimitPerIndex" in spec or "maxFailedIndexes" in spec or "FailIndex" in actions:
            assert spec.get("completionMode") == "Indexed" and "backoffLimitPerIndex" in spec, name
            assert pod_spec(job)["restartPolicy"] == "Never", name
            assert spec["completions"] <= MAX_INDEXED_COMPLETIONS and spec["parallelism"] <= MAX_INDEXED_COMPLETIONS
        if "maxFailedIndexes" in spec:
            assert 0 <= spec["maxFailedIndexes"] <= spec["completions"], name
        if spec.get("completionMode") == "Indexed":
            assert spec["completions"] >= 1, name
    for name in INDEXED:
        spec = jobs[name]["spec"]
        # Each partition gets the retries a stage's Job gets, counted per partition (a Job-wide
        # backoffLimit would count all partitions' failures together); the aggregation needs every
        # partition, so the first that fails for good fails the Job.
        assert spec["backoffLimitPerIndex"] == whole["backoffLimit"] and "backoffLimit" not in spec, name
        assert spec["maxFailedIndexes"] == 0, name
        # Exit code 2 (a bad setting, a shard out of range, a phase run too early) fails the Job at
        # once, in every pod alike; disruptions do not count.
        assert spec["podFailurePolicy"] == whole["podFailurePolicy"], name
        assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["containerName"] == STAGE_CONTAINER


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_steps_of_a_stage_agree_on_its_settings_and_pods(overlay):
    """A shard's partitions are restored by the next step only when both ran with the same settings
    (they are part of the published output's stamp): the steps differ in FACTOR_PHASE alone."""
    objects = render(overlay)
    jobs = jobs_by_name(objects)
    for names in SHARDED_TARGETS.values():
        last = jobs[names[-1]]
        env = resolved_env(stage_container(last), objects)
        for name in names[:-1]:
            step_env = resolved_env(stage_container(jobs[name]), objects)
            assert {k: v for k, v in step_env.items() if k != "FACTOR_PHASE"} == {
                k: v for k, v in env.items() if k != "FACTOR_PHASE"}, name
            # Same image, command, resources (a GPU each in the cloud), volumes and security.
            container = {k: v for k, v in stage_container(jobs[name]).items() if k != "env"}
            assert container == {k: v for k, v in stage_container(last).items() if k != "env"}, name
            pod = {k: v for k, v in pod_spec(jobs[name]).items() if k != "containers"}
            assert pod == {k: v for k, v in pod_spec(last).items() if k != "containers"}, name


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_make_deploys_the_sharded_steps_in_order(overlay):
    for target, names in SHARDED_TARGETS.items():
        assert make_steps(target, overlay) == names
    help_lines = [line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("## deploy-")]
    assert any(line.startswith("## deploy-fit-factors-sharded") for line in help_lines)
    # Each step alone too, by its Job's name.
    assert make_steps("deploy-fit-factors-lambda", overlay) == ["fit-factors-lambda"]
