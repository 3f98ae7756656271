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
import subprocess
from pathlib import Path

import pytest

from tests.conftest import jobs_env, run_jobs
from tests.test_manifest_run import expand
from tests.test_manifests import MAKE, ROOT, pod_spec, resolved_env, stage_container
from tests.test_sharded_manifests import run_the_local_overlay

pytestmark = pytest.mark.image

IMAGE_USER = "10001:10001"  # the Dockerfile's USER, and the pods' runAsUser:runAsGroup
# A smaller demo than `make demo`'s defaults, the same in the container and out of it.
DEMO_ARGS = ["--num_examples", "200", "--num_train_epochs", "4", "--num_influential", "10"]


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


def test_every_job_of_the_local_overlay_runs_as_a_container(image, s3_env, s3_bucket, tmp_path):
    """tests/test_sharded_manifests.py's run of every Job, in the README's order, each pod a
    container of the image; then `make fetch-report` fetches the report from the bucket."""
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
