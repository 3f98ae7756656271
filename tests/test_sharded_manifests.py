"""fit_factors and compute_scores spread over pods (docs/guides/kubernetes.md, "Spread over pods"): Indexed Jobs whose
pods each compute one data partition, and plain Jobs that aggregate, deployed in order by
`make deploy-fit-factors-sharded` and `make deploy-compute-scores-sharded`.

tests/test_manifests.py validates every rendered object (these Jobs too) against the Kubernetes
1.33 schemas and checks every stage Job's variables, commands, security and failure policy. Here:
what the schemas cannot say (the Job API's rules for Indexed Jobs), that each Indexed Job's
completions is the partition count its pods see, that the steps of a stage agree on its settings,
the make targets' order, and the local overlay's sharded Jobs run as local processes (one per index,
at once, as pods would) against a loopback S3 server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from influence_core import settings
from influence_core.errors import ConfigError
from influence_core.factors import PHASES
from influence_core.stages import PIPELINE
from tests.test_manifest_run import BUILD_SHA, pod_process
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

pytestmark = pytest.mark.slow  # kustomize and make as processes; the local overlay's Jobs run

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
INDEXED = PARTITION_JOBS | {"lds-retrain"}  # lds-retrain: a pod per LDS subset
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


# ==== the local overlay's sharded Jobs, run ====

def local_process(job: dict, objects, scratch, s3_env: dict, artifacts_uri: str, pod_env: dict) -> subprocess.Popen:
    """A pod of `job` as a local process (tests/test_manifest_run.py maps the image onto this checkout),
    with `pod_env` (what Kubernetes sets per pod) added to its environment."""
    argv, env = pod_process(job, objects, scratch, s3_env, artifacts_uri)
    return subprocess.Popen(argv, cwd=ROOT, env={**env, **pod_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_job(job: dict, objects, scratch, s3_env: dict, artifacts_uri: str, launch=local_process) -> list[str]:
    """The Job's pods, launched by `launch`: one, or for an Indexed Job one per index, all at once,
    each with the JOB_COMPLETION_INDEX Kubernetes sets. Returns each pod's log (stderr)."""
    name = job["metadata"]["name"]
    indexed = job["spec"].get("completionMode") == "Indexed"
    count = job["spec"]["completions"] if indexed else 1
    # Pods have a CPU limit each; here they share this machine's cores.
    threads = max(1, len(os.sched_getaffinity(0)) // count)
    pods = [launch(job, objects, scratch / name / str(index), s3_env, artifacts_uri,
                   {"JOB_COMPLETION_INDEX": str(index), "OMP_NUM_THREADS": str(threads)} if indexed else {})
            for index in range(count)]
    logs = []
    for index, pod in enumerate(pods):
        _, stderr = pod.communicate(timeout=600)
        assert pod.returncode == 0, f"{name} index {index}:\n{stderr[-4000:]}"
        logs.append(stderr)
    return logs


def run_the_local_overlay(tmp_path, s3_env: dict, s3_bucket: str, launch=local_process,
                          git_sha: str = BUILD_SHA) -> str:
    """Every stage's Job of the local overlay, each pod launched by `launch`, with fit-factors,
    compute-scores and build-index spread over pods as `make deploy-*-sharded` deploys them (their
    own Jobs aggregate, so those run too). A smaller corpus and run, and the LDS with 2 subsets of
    1 seed, as a user sets them in settings.env. Returns the artifacts' URI in the bucket."""
    k8s = copy_k8s(tmp_path)
    settings_env = k8s / "base" / "settings.env"
    settings_env.write_text(settings_env.read_text().replace("NUM_EXAMPLES=600", "NUM_EXAMPLES=100")
                            .replace("NUM_TRAIN_EPOCHS=10", "NUM_TRAIN_EPOCHS=1")
                            .replace("LDS_SUBSETS=16", "LDS_SUBSETS=2").replace("LDS_SEEDS=2", "LDS_SEEDS=1")
                            .replace("INDEX_SHARD_SIZE=1024", "INDEX_SHARD_SIZE=30").replace("RERANK_TOP_K=100",
                                                                                          "RERANK_TOP_K=5"))
    objects = kustomize(k8s / "overlays" / "local")
    jobs = jobs_by_name(objects)
    rendered_uri = resolved_env(stage_container(jobs["train"]), objects)["ARTIFACTS_URI"]
    # The manifest's path, in the test's fresh bucket: s3://artifacts/influence -> s3://test-.../influence
    artifacts_uri = s3_bucket + "/" + rendered_uri.removeprefix("s3://").partition("/")[2]
    order = ["train", *make_steps("deploy-fit-factors-sharded", "local"), "inspect-factors",
             *make_steps("deploy-compute-scores-sharded", "local"), "compute-self-scores", "inspect-scores",
             *make_steps("deploy-build-index-sharded", "local"), "query"]
    lds_order = [*make_steps("deploy-lds", "local"), "inspect-scores"]  # then the report states the LDS
    assert {stage_of(jobs[name]) for name in order + lds_order} == {stage.name for stage in PIPELINE} | {
        "lds", "build_index", "query"}
    logs = {name: run_job(jobs[name], objects, tmp_path, s3_env, artifacts_uri, launch) for name in order}
    # lds-retrain runs a pod per subset, lds correlates.
    lds_logs = [run_job(jobs[name], objects, tmp_path / "lds", s3_env, artifacts_uri, launch) for name in lds_order]
    assert len(lds_logs[0]) == 2 and all("published subset" in log for log in lds_logs[0]), lds_logs[0]
    assert "2 of 2 subsets already published" in lds_logs[1][0], lds_logs[1][0][-2000:]

    # Each pod of an Indexed Job computed its own partition, and the next step restored them.
    assert len(logs["fit-factors-covariance"]) == len(logs["compute-scores-shards"]) == 2
    for index, log in enumerate(logs["fit-factors-covariance"]):
        assert f"shard {index} of the covariance phase" in log, log[-2000:]
    for index, log in enumerate(logs["fit-factors-lambda"]):
        assert f"shard {index} of the lambda phase" in log, log[-2000:]
    for index, log in enumerate(logs["compute-scores-shards"]):
        assert f"(shard {index} of 2)" in log, log[-2000:]
    for index, log in enumerate(logs["build-index-shards"]):  # 100 examples: shards 0-3, two a pod
        assert re.findall(r"index shard (\d+) ", log) == [str(index), str(index + 2)], log[-2000:]
    assert "index shard" not in logs["build-index"][0]  # every shard restored, none built again
    for name in ("fit-factors-eigendecomposition", "fit-factors", "compute-scores", "build-index"):
        assert re.search(r"restored \d+ published files", logs[name][0]), logs[name][0][-2000:]

    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=s3_env["FSSPEC_S3_ENDPOINT_URL"], key=s3_env["AWS_ACCESS_KEY_ID"],
                           secret=s3_env["AWS_SECRET_ACCESS_KEY"])
    env = resolved_env(stage_container(jobs["compute-scores"]), objects)
    factors = json.loads(fs.cat_file(f"{artifacts_uri}/influence/factors_{env['FACTORS_NAME']}/_SUCCESS"))
    assert factors["settings"]["covariance_data_partitions"] == factors["settings"]["lambda_data_partitions"] == 2
    scores_dir = f"{artifacts_uri}/influence/scores_{env['SCORES_NAME']}"
    assert json.loads(fs.cat_file(f"{scores_dir}/_SUCCESS"))["settings"]["score_data_partitions"] == 2
    assert not fs.glob(f"{scores_dir}/pairwise_scores_data_partition*")  # length-sorted: not published
    # The query Job scored the prompts against the index into its own scores, beside compute_scores'.
    queried = json.loads(fs.cat_file(f"{artifacts_uri}/influence/scores_query_scores/_SUCCESS"))
    assert queried["stage"] == "query" and queried["settings"]["rerank_top_k"] == 5
    assert len(fs.ls(f"{artifacts_uri}/index/index")) == 4 + 2  # four shards, projection.json, _SUCCESS

    # The report lands where `make fetch-report` looks, with every prompt and its ranked examples.
    report_dir = f"{artifacts_uri}/reports/{env['SCORES_NAME']}"
    report = json.loads(fs.cat_file(f"{report_dir}/report.json"))
    prompts = json.loads((ROOT / "prompts.json").read_text())
    assert [(p["prompt"], p["completion"]) for p in report["prompts"]] == [
        (p["prompt"], p["completion"]) for p in prompts]
    assert all(p["top_positive"] and p["top_negative"] for p in report["prompts"])
    assert report["self_influence"], "compute-self-scores ran before inspect-scores"
    assert report["lds"]["subsets"] == 2 and set(report["lds"]["baselines"]) == {"identity", "bm25", "random"}
    assert fs.exists(f"{artifacts_uri}/reports/lds/lds.md")
    assert fs.exists(f"{report_dir}/{env['SCORES_NAME']}_report.md")
    # The image's GIT_SHA (the build argument) is what the manifests record.
    assert json.loads(fs.cat_file(f"{report_dir}/_SUCCESS"))["git_sha"] == git_sha

    # preview_data, the stage outside the pipeline, prints the configured corpus.
    pod = launch(jobs["preview-data"], objects, tmp_path / "preview-data", s3_env, artifacts_uri, {})
    stdout, stderr = pod.communicate(timeout=600)
    assert pod.returncode == 0 and stdout.strip(), stderr[-4000:]
    return artifacts_uri


def test_local_overlay_jobs_run_the_pipeline_into_the_bucket(s3_env, s3_bucket, tmp_path):
    """The local overlay's Jobs, their pods as local processes (tests/test_image.py: as containers)."""
    run_the_local_overlay(tmp_path, s3_env, s3_bucket)
