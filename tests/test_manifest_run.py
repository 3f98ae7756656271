"""The local overlay's pods, run as local processes: a stage Job's command, arguments and
environment exactly as rendered (plus the image's ENV), against a loopback S3 server.

Two pods here: a bad setting's exit code kept through the Jobs' launcher, and the import-model Job
publishing a model of your own into the bucket. Every Job of the overlay, in the README's order and
spread over pods, runs as containers of the built image in tests/test_image.py (`make test-image`):
it passes only if the manifests, the image and the code agree.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.test_manifests import (
    ROOT,
    VENV_BIN,
    image_env,
    pod_spec,
    render,
    resolved_env,
    stage_container,
    stage_jobs,
)

# Smaller than the demo's defaults, for speed; only where the Job sets them.
FASTER = {"NUM_EXAMPLES": "100", "NUM_TRAIN_EPOCHS": "1"}
IMAGE_ROOT = "/app"  # the image's WORKDIR, where the Dockerfile copies the repository's files
IMAGE_VENV = "/opt/venv/bin"
BUILD_SHA = "0123456789abcdef-e2e"  # what `make build` passes as the GIT_SHA build argument


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) references in command, args and values."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def pod_process(job: dict, objects, scratch: Path, s3_env: dict, artifacts_uri: str) -> tuple[list[str], dict]:
    """argv and environment of the job's container, mapped from the image onto this checkout:
    /app is the repository, /opt/venv/bin is .venv/bin, each emptyDir is a fresh local folder."""
    container = stage_container(job)
    volumes = {volume["name"]: volume for volume in pod_spec(job)["volumes"]}
    mounts = {}
    for mount in container["volumeMounts"]:
        assert "emptyDir" in volumes[mount["name"]], mount
        mounts[mount["mountPath"]] = scratch / mount["name"]
        mounts[mount["mountPath"]].mkdir(parents=True)
    mounts[IMAGE_ROOT] = ROOT

    def local(value: str) -> str:
        for image_path, local_path in mounts.items():
            if value == image_path or value.startswith(image_path + "/"):
                return str(local_path) + value[len(image_path):]
        return value

    env = {name: local(value) for name, value in image_env().items()}
    env["PATH"] = env["PATH"].replace(IMAGE_VENV, str(VENV_BIN)).replace("$PATH", os.environ["PATH"])
    env["GIT_SHA"] = BUILD_SHA
    for name, value in resolved_env(container, objects).items():
        env[name] = s3_env[name] if value is None else local(expand(value, env))  # None: from the Secret
    env.update({name: value for name, value in FASTER.items() if name in env})
    env["FSSPEC_S3_ENDPOINT_URL"] = s3_env["FSSPEC_S3_ENDPOINT_URL"]
    env["ARTIFACTS_URI"] = artifacts_uri

    argv = [local(expand(arg, env)) for arg in container["command"] + container["args"]]
    argv[0] = shutil.which(argv[0], path=env["PATH"])
    assert argv[0] and Path(argv[0]).parent == VENV_BIN, f"{argv[0]} is not the image's (here: .venv's) python"
    return argv, env


def run_pod(argv: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_bad_setting_exits_2_so_the_job_fails_at_once(s3_env, s3_bucket, tmp_path):
    """torchrun alone turns a worker's exit code 2 into 1; the Jobs' launcher keeps it, so the
    podFailurePolicy's FailJob rule matches instead of retrying a bad configuration."""
    objects = render("local")
    job = stage_jobs(objects)["train"]
    argv, env = pod_process(job, objects, tmp_path, s3_env, s3_bucket)
    env["MODEL_PRESET"] = "gpt-neo-1t"
    result = run_pod(argv, env, timeout=120)
    (rule,) = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert result.returncode in rule["onExitCodes"]["values"], result.stderr[-2000:]
    assert "MODEL_PRESET" in result.stderr


def test_launcher_exit_codes():
    spec = importlib.util.spec_from_file_location("torchrun_stage", ROOT / "docker" / "torchrun_stage.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    assert launcher.exit_code(2) == 2  # the stages' bad-input code, kept
    assert launcher.exit_code(-9) == 137  # SIGKILL (out of memory), as a shell reports it
    assert launcher.exit_code(0) == 1  # a failure never reads as success


def test_the_import_model_job_publishes_a_model_of_your_own(s3_env, s3_bucket, tmp_path):
    """The import-model Job's pod with MODEL set (as the overlay's configMapGenerator would) to a
    model in a bucket: model/ and data/train/ land in the artifacts for the later stages."""
    import json

    import fsspec

    from tests.families import save_tiny_model

    fs = fsspec.filesystem("s3", endpoint_url=s3_env["FSSPEC_S3_ENDPOINT_URL"], key=s3_env["AWS_ACCESS_KEY_ID"],
                           secret=s3_env["AWS_SECRET_ACCESS_KEY"])
    source = save_tiny_model("gpt2", tmp_path / "gpt2")
    fs.put([str(path) for path in source.iterdir()], [f"{s3_bucket}/models/gpt2/{path.name}"
                                                      for path in source.iterdir()])
    objects = render("local")
    job = stage_jobs(objects)["import_model"]
    argv, env = pod_process(job, objects, tmp_path / "pod", s3_env, f"{s3_bucket}/run")
    env["MODEL"] = f"{s3_bucket}/models/gpt2"
    result = run_pod(argv, env)
    assert result.returncode == 0, result.stderr[-3000:]
    for output in ("model", "data/train"):
        manifest = json.loads(fs.cat_file(f"{s3_bucket}/run/{output}/_SUCCESS"))
        assert manifest["stage"] == "import_model" and manifest["settings"]["model"] == env["MODEL"]
    assert json.loads(fs.cat_file(f"{s3_bucket}/run/model/config.json"))["model_type"] == "gpt2"

