"""The image for real (`make test-image`, which builds, pushes and pulls it first): run by Docker as
the README's commands and the local overlay's pods run it.

The other tests map the image onto this checkout (tests/test_manifest_run.py); these run the image
itself, so a file missing from a COPY, a path the image's user cannot write under the read-only root,
or a flag the entrypoint drops fails here. IMAGE_UNDER_TEST names the image (docker/test-image.sh
sets it to the digest it pulled back from the registry).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from influence_core.stages import PIPELINE
from tests.conftest import jobs_env, run_jobs
from tests.test_manifest_run import expand
from tests.test_manifests import MAKE, ROOT, copy_k8s, kustomize, pod_spec, resolved_env, stage_container
from tests.test_sharded_manifests import jobs_by_name, make_steps, stage_of

pytestmark = pytest.mark.image

IMAGE_USER = "10001:10001"  # the Dockerfile's USER, and the pods' runAsUser:runAsGroup
# A smaller demo than `make demo`'s defaults, the same in the container and out of it.
DEMO_ARGS = ["--num_examples", "200", "--num_train_epochs", "4", "--num_influential", "10", "--ensemble_seeds", "1"]


@pytest.fixture(scope="module")
def image() -> str:
    ref = os.environ.get("IMAGE_UNDER_TEST")
    if not ref:
        pytest.fail("IMAGE_UNDER_TEST is not set: run `make test-image`, which builds the image first", pytrace=False)
    return ref


def inspect(ref: str) -> dict:
    result = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def image_git_sha(ref: str) -> str:
    """The GIT_SHA the image was built with (its ENV, from `make build`'s build argument)."""
    return dict(item.split("=", 1) for item in inspect(ref)["Config"]["Env"])["GIT_SHA"]


def test_the_image_runs_as_its_non_root_user_and_records_its_commit(image):
    config = inspect(image)["Config"]
    assert config["User"] == IMAGE_USER and config["Entrypoint"] == ["python", "-m", "jobs"]
    who = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", image], capture_output=True, text=True,
                         timeout=60)
    assert who.stdout.startswith("uid=10001") and "gid=10001" in who.stdout, who.stdout + who.stderr
    assert config["Labels"]["org.opencontainers.image.revision"] == image_git_sha(image) != ""


def top_ten(artifacts: Path) -> list[tuple[list[int], list[int]]]:
    report = json.loads((artifacts / "reports/prompt_scores/report.json").read_text())
    return [([item["index"] for item in p["top_positive"]], [item["index"] for item in p["top_negative"]])
            for p in report["prompts"]]


def test_make_docker_run_writes_the_report_the_same_commit_writes_without_docker(image, tmp_path):
    """The README's `make docker-run STAGE=pipeline`, as the image's own user with a read-only root
    filesystem and tmpfs on /tmp and /cache, into a mounted folder; then the same run without Docker."""
    in_docker = tmp_path / "docker"
    in_docker.mkdir()
    in_docker.chmod(0o777)  # the image's user writes it, as a pod's fsGroup lets it
    result = subprocess.run([*MAKE, "docker-run", "STAGE=pipeline", f"ARGS={' '.join(DEMO_ARGS)}",
                             f"IMAGE_REF={image}", f"ARTIFACTS_DIR={in_docker}", f"DOCKER_USER={IMAGE_USER}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    local = tmp_path / "local" / "artifacts"
    without = run_jobs("pipeline", *DEMO_ARGS, env={"ARTIFACTS_URI": str(local)}, timeout=1200)
    assert without.returncode == 0, without.stderr[-4000:]
    assert top_ten(in_docker) == top_ten(local)
    manifest = json.loads((in_docker / "reports/prompt_scores/_SUCCESS").read_text())
    assert manifest["git_sha"] == image_git_sha(image)


def as_container(image: str):
    """A launcher for run_the_local_overlay: each pod as `docker run` of `image` with the pod's
    command, arguments, environment (ConfigMap values resolved; the Secret's from the loopback S3
    server), user, read-only root, dropped capabilities, CPU and memory limits, and its emptyDirs as
    tmpfs; on the host's network, so the loopback S3 server is the bucket."""
    def launch(job: dict, objects, scratch: Path, s3_env: dict, artifacts_uri: str, pod_env: dict):
        container, pod = stage_container(job), pod_spec(job)
        assert container["image"] == "influence-jobs", container["image"]  # what `make deploy-*` points at a build
        security = {**pod.get("securityContext", {}), **container["securityContext"]}
        argv = ["docker", "run", "--rm", "--network", "host",
                "--user", f"{security['runAsUser']}:{security['runAsGroup']}",
                "--cpus", str(container["resources"]["limits"]["cpu"]),
                "--memory", container["resources"]["limits"]["memory"].replace("Gi", "g")]
        if security.get("readOnlyRootFilesystem"):
            argv.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            argv += ["--security-opt", "no-new-privileges"]
        argv += [arg for cap in security["capabilities"]["drop"] for arg in ("--cap-drop", cap)]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for mount in container["volumeMounts"]:
            empty_dir = volumes[mount["name"]]["emptyDir"]  # the only kind of volume the Jobs have
            size = f",size={empty_dir['sizeLimit'].replace('Gi', 'g')}" if "sizeLimit" in empty_dir else ""
            argv += ["--tmpfs", f"{mount['mountPath']}:rw,exec,mode=1777{size}"]
        env = {}
        for name, value in resolved_env(container, objects).items():
            env[name] = s3_env[name] if value is None else expand(value, env)  # None: from the Secret
        env.update(pod_env, FSSPEC_S3_ENDPOINT_URL=s3_env["FSSPEC_S3_ENDPOINT_URL"], ARTIFACTS_URI=artifacts_uri)
        argv += [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
        command = [expand(arg, env) for arg in container["command"] + container["args"]]
        argv += ["--entrypoint", command[0], image, *command[1:]]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return launch


def run_job(job: dict, objects, scratch, s3_env: dict, artifacts_uri: str, launch) -> list[str]:
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


def run_the_local_overlay(tmp_path, s3_env: dict, s3_bucket: str, launch, git_sha: str) -> str:
    """Every stage's Job of the local overlay, each pod launched by `launch`, with fit-factors,
    compute-scores and build-index spread over pods as `make deploy-*-sharded` deploys them (their
    own Jobs aggregate, so those run too). A smaller corpus and run, and the LDS with 2 subsets of
    1 seed, as a user sets them in settings.env. Returns the artifacts' URI in the bucket."""
    k8s = copy_k8s(tmp_path)
    settings_env = k8s / "base" / "settings.env"
    settings_env.write_text(settings_env.read_text().replace("NUM_EXAMPLES=600", "NUM_EXAMPLES=100")
                            .replace("NUM_TRAIN_EPOCHS=10", "NUM_TRAIN_EPOCHS=1")
                            .replace("LDS_SUBSETS=16", "LDS_SUBSETS=2").replace("LDS_SEEDS=2", "LDS_SEEDS=1")
                            .replace("ENSEMBLE_SEEDS=1", "ENSEMBLE_SEEDS=2")
                            .replace("INDEX_SHARD_SIZE=1024", "INDEX_SHARD_SIZE=30").replace("RERANK_TOP_K=100",
                                                                                          "RERANK_TOP_K=5"))
    objects = kustomize(k8s / "overlays" / "local")
    jobs = jobs_by_name(objects)
    rendered_uri = resolved_env(stage_container(jobs["train"]), objects)["ARTIFACTS_URI"]
    # The manifest's path, in the test's fresh bucket: s3://artifacts/influence -> s3://test-.../influence
    artifacts_uri = s3_bucket + "/" + rendered_uri.removeprefix("s3://").partition("/")[2]
    order = ["train", *make_steps("deploy-fit-factors-sharded", "local"), "inspect-factors", "ensemble",
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


def test_every_job_of_the_local_overlay_runs_as_a_container(image, s3_env, s3_bucket, tmp_path):
    """Every Job, in the README's order, each pod a container of the image; then `make fetch-report`
    fetches the report from the bucket."""
    artifacts_uri = run_the_local_overlay(tmp_path, s3_env, s3_bucket, launch=as_container(image),
                                          git_sha=image_git_sha(image))
    report_dir = tmp_path / "report"
    fetched = subprocess.run([*MAKE, "fetch-report", f"ARTIFACTS_URI={artifacts_uri}", "SCORES_NAME=prompt_scores",
                              f"REPORT_DIR={report_dir}"], cwd=ROOT, env=jobs_env(s3_env), capture_output=True,
                             text=True, timeout=300)
    assert fetched.returncode == 0, fetched.stderr[-4000:]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["prompts"] and all(p["top_positive"] for p in report["prompts"])
    assert (report_dir / "report.html").exists() and (report_dir / "prompt_scores_report.md").exists()
