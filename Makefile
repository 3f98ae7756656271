# Everything runs from the virtual environment at .venv, which `make install` creates.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
UV := $(VENV)/bin/uv pip
ARTIFACTS_URI ?= ./artifacts
SCORES_NAME ?= prompt_scores
export ARTIFACTS_URI

.PHONY: install demo eval lds lds-study lds-corpora bench plan test test-fast test-image lint docs docs-serve settings-docs fetch-report clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	# uv installs the same pinned requirements as pip would, several times faster (parallel
	# downloads, a shared cache); pip's PIP_FIND_LINKS, where set (a local torch wheel), is uv's too.
	# --compile-bytecode: the .pyc files written once here (pip does it, uv does not by default), so a
	# stage's process does not compile torch's and transformers' sources again each time it starts
	# (about 10 s a process where PYTHONDONTWRITEBYTECODE keeps Python from caching them itself).
	$(PIP) install --quiet uv==0.13.9
	$(if $(PIP_FIND_LINKS),UV_FIND_LINKS="$(PIP_FIND_LINKS)") $(UV) install --python $(PY) --quiet --compile-bytecode \
		-r requirements.txt -r requirements-dev.txt
	# --no-deps: kronfluence declares torchvision, which it never imports and which breaks
	# transformers imports beside the CPU torch build. Its real dependencies are in requirements.txt.
	$(UV) install --python $(PY) --quiet --compile-bytecode --no-deps kronfluence==1.0.1
	touch $@

## demo: train, fit factors, score the shipped prompts and write the report, on the built-in corpus
demo: install
	$(PY) -m jobs pipeline
	@echo "Report: $(ARTIFACTS_URI)/reports/$(SCORES_NAME)/$(SCORES_NAME)_report.md"

## plan: each stage's estimated peak memory, published sizes and largest batch sizes that fit the device
plan: install
	$(PY) -m jobs plan

## eval: fact-tracing evaluation on both demo corpora (demo, and demo-hard in $(ARTIFACTS_URI)/demo-hard):
## trains first (skipped when already trained), then recall@10 and MRR of the planted facts for each factor
## strategy and a BM25 baseline
HARD = ARTIFACTS_URI=$(ARTIFACTS_URI)/demo-hard DATASET=demo-hard PROMPTS=prompts-hard.json
eval: install
	$(PY) -m jobs train
	$(PY) -m jobs evaluate
	$(HARD) $(PY) -m jobs train
	$(HARD) $(PY) -m jobs evaluate
	@echo "Evaluation: $(ARTIFACTS_URI)/reports/evaluation/evaluation.md, $(ARTIFACTS_URI)/demo-hard/reports/evaluation/evaluation.md"

## lds: the linear datamodeling score of the demo's scores (docs/guides/lds.md): trains,
## fits, makes the ensemble and scores first (each skipped when done), retrains the model on LDS_SUBSETS random halves of its
## data, correlates, and writes the report again with the LDS in it (about 8 minutes on 2 CPU cores)
lds: install
	$(PY) -m jobs train
	$(PY) -m jobs fit_factors
	$(PY) -m jobs ensemble
	$(PY) -m jobs compute_scores
	$(PY) -m jobs lds
	$(PY) -m jobs inspect_scores
	@echo "LDS: $(ARTIFACTS_URI)/reports/lds/lds.md"

## lds-study: the LDS of the choices behind the defaults (tracked modules, damping, task, strategy, an
## ensemble over training seeds) on the demo, into docs/results/lds_study.md (about 20 minutes on 2 CPU cores)
lds-study: install
	$(PY) bench/lds_study.py

## lds-corpora: every scoring method's LDS (EK-FAC alone, fused with BM25, gated, ensembles) on demo, demo-hard
## and real prose (the Jargon File), 24 prompts each, with paired differences: the table the defaults are
## chosen by (docs/results/lds_corpora.md; about two hours on 2 CPU cores, resumable: a rerun skips what is done)
lds-corpora: install
	$(PY) bench/lds_corpora.py

## bench: every stage timed at the demo size and 5x, beside the original approach and bare Kronfluence
## (docs/results/results.md); the cost curve of every stage over 600-4,800 documents with the plan's estimates
## beside the measured memory and sizes (docs/results/cost_curve.md); bfloat16 against float32 scores
## (docs/results/precision.md). About 30 minutes on 2 CPU cores
bench: install
	$(PY) bench/run.py
	$(PY) bench/cost_curve.py
	$(PY) bench/precision.py

## test: the whole test suite, on TEST_WORKERS processes (tests sharing a trained fixture share one),
## after installing what it needs: the virtual environment and Chromium (test-chromium)
TEST_WORKERS ?= 2
test: install test-chromium
	$(PY) -m pytest -m "not slow and not image" -n $(TEST_WORKERS) --dist loadgroup
	$(PY) -m pytest -m "slow and not image" -n $(TEST_WORKERS) --dist loadgroup

## test-fast: the in-process tests alone (every test not marked slow in tests/conftest.py), about a minute
test-fast: install
	$(PY) -m pytest -m "not slow and not image" -n $(TEST_WORKERS) --dist loadgroup

## test-image: the image built (docker/Dockerfile), pushed to a registry on 127.0.0.1:5000, pulled
## back by digest and run by Docker as the README and the local overlay's pods run it
## (tests/test_image.py). Installs and starts Docker and the registry when missing (root or sudo).
test-image: install
	docker/test-image.sh

## test-chromium: headless Chromium for tests/test_report_html.py, Debian's `chromium` package,
## installed with apt-get (through sudo when not root) only when `chromium` is not on PATH
.PHONY: test-chromium
test-chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; \
		elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
		else echo "make test needs Chromium: install Debian's chromium package (as root: apt-get install chromium)" >&2; \
			exit 1; fi; \
		set -x; \
		$$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	}

## fetch-report: copy reports/$(SCORES_NAME)/ from $(ARTIFACTS_URI) (a bucket) to $(REPORT_DIR)
REPORT_DIR ?= ./report
fetch-report: install
	$(PY) -m jobs fetch_report --scores_name $(SCORES_NAME) --report_dir $(REPORT_DIR)

lint: install
	$(VENV)/bin/ruff check .

## docs: the documentation site from docs/ into site/ (mkdocs build --strict: broken links fail);
## docs-serve: the same, served at http://127.0.0.1:8000; settings-docs: docs/settings.md from the code
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

settings-docs: install
	$(PY) -m influence_core.settings_reference > docs/settings.md

clean:
	rm -rf artifacts .pytest_cache site

# ---- Containers and Kubernetes (docker/, k8s/; docs/guides/docker.md, docs/guides/kubernetes.md)
REGISTRY ?= localhost:5000
IMAGE ?= influence-jobs
# The tag is the commit, marked -dirty when the work tree has changes, so an image says what it holds.
DIRTY := $(if $(shell git status --porcelain 2>/dev/null | head -n 1),-dirty)
GIT_SHA := $(shell git rev-parse HEAD 2>/dev/null)$(DIRTY)
TAG ?= $(or $(shell git rev-parse --short HEAD 2>/dev/null),dev)$(DIRTY)
IMAGE_NAME = $(if $(REGISTRY),$(REGISTRY)/)$(IMAGE)
IMAGE_REF ?= $(IMAGE_NAME):$(TAG)
OVERLAY ?= local
STAGE ?=
ARGS ?=
DOCKER_RUN_FLAGS ?=
# docker-run's artifacts folder, and the user it runs as (its files are then yours; the image's own
# user is 10001, as the pods run it: DOCKER_USER=10001:10001 with a folder that user can write).
ARTIFACTS_DIR ?= $(CURDIR)/artifacts
DOCKER_USER ?= $$(id -u):$$(id -g)
# More `docker build` flags, e.g. "--build-arg PYTHON_IMAGE=..." (another base with Debian bookworm
# and Python 3.11) or "--build-arg PIP_FLAGS=--no-index" (docker/wheels/ alone).
DOCKER_BUILD_FLAGS ?=
# Every Job of k8s/base (job-<name>.yaml): a stage's own Job, or a step of a stage spread over pods.
K8S_JOBS := $(patsubst k8s/base/job-%.yaml,%,$(wildcard k8s/base/job-*.yaml))
# fit-factors and compute-scores spread over pods (docs/guides/kubernetes.md, "Spread over pods"): their Jobs in the
# order they run. Indexed Jobs compute a data partition per pod; the stage's own Job aggregates.
K8S_FIT_FACTORS_SHARDED := fit-factors-covariance fit-factors-eigendecomposition fit-factors-lambda fit-factors
K8S_COMPUTE_SCORES_SHARDED := compute-scores-shards compute-scores
K8S_BUILD_INDEX_SHARDED := build-index-shards build-index
# lds: an Indexed Job retrains a subset per pod, then the lds Job correlates (docs/guides/lds.md).
K8S_LDS := lds-retrain lds

.PHONY: build push print-image-ref docker-run k8s-render deploy-local-secret deploy-local-storage \
	deploy-fit-factors-sharded deploy-compute-scores-sharded deploy-build-index-sharded

## build: the image for every stage, tagged $(IMAGE_REF) [DOCKER_BUILD_FLAGS="--build-arg ..."]
build:
	docker build -f docker/Dockerfile --build-arg GIT_SHA=$(GIT_SHA) -t $(IMAGE_REF) $(if $(DOCKER_BUILD_FLAGS),$(DOCKER_BUILD_FLAGS) ).

## push: push $(IMAGE_REF) to $(REGISTRY)
push:
	docker push $(IMAGE_REF)

# print-image-ref: the reference `make build` tags, for scripts (docker/test-image.sh)
print-image-ref:
	@echo $(IMAGE_REF)

## docker-run STAGE=train [ARGS="--flag value"]: one stage in the image, artifacts in ./artifacts,
## with the read-only root filesystem of the Kubernetes pods. DOCKER_RUN_FLAGS="--gpus all" for GPUs.
docker-run:
	@test -n "$(STAGE)" || { echo "usage: make docker-run STAGE=<stage> [ARGS='--flag value']" >&2; exit 2; }
	mkdir -p "$(ARTIFACTS_DIR)"
	docker run --rm --user "$(DOCKER_USER)" --read-only --tmpfs /tmp --tmpfs /cache --shm-size=1g \
		-v "$(ARTIFACTS_DIR):/artifacts" -e ARTIFACTS_URI=/artifacts $(DOCKER_RUN_FLAGS) \
		$(IMAGE_REF) $(subst -,_,$(STAGE)) $(ARGS)

# Shell prelude: KDIR is a scratch copy of the overlay (k8s/ copied to a temporary folder) that
# also sets this build's image, so the tag is never written into the repository.
K8S_WITH_IMAGE = scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && cp -R k8s "$$scratch/" && \
	KDIR="$$scratch/k8s/overlays/$(OVERLAY)" && test -f "$$KDIR/kustomization.yaml" && \
	printf 'images:\n  - name: influence-jobs\n    newName: %s\n    newTag: "%s"\n' \
		"$(IMAGE_NAME)" "$(TAG)" >> "$$KDIR/kustomization.yaml"

## k8s-render [OVERLAY=local|cloud]: print the manifests that deploy-<stage> applies
k8s-render:
	@$(K8S_WITH_IMAGE) && kubectl kustomize "$$KDIR"

## deploy-local-secret: the local overlay's S3/MinIO credentials, random, made once per cluster
deploy-local-secret:
	@kubectl get secret artifacts-s3-credentials >/dev/null 2>&1 || \
	kubectl create secret generic artifacts-s3-credentials \
		--from-literal=AWS_ACCESS_KEY_ID="influence-$$(LC_ALL=C tr -dc a-f0-9 </dev/urandom | head -c 8)" \
		--from-literal=AWS_SECRET_ACCESS_KEY="$$(LC_ALL=C tr -dc a-f0-9 </dev/urandom | head -c 40)"

## deploy-local-storage: MinIO and its artifacts bucket (the local overlay)
deploy-local-storage: deploy-local-secret
	@$(K8S_WITH_IMAGE) && kubectl apply -k "$$KDIR" -l app.kubernetes.io/component=storage
	kubectl rollout status deployment/minio --timeout=5m
	kubectl wait --for=condition=complete --timeout=5m job/create-bucket

# Deploy the Job $(1) and wait until it is complete: what every deploy target does per Job.
define deploy_job
	kubectl delete job/$(1) --ignore-not-found --wait
	@$(K8S_WITH_IMAGE) && kubectl apply -k "$$KDIR" -l 'app.kubernetes.io/component in (shared,$(1))'
	@echo "waiting for job/$(1) (logs: kubectl logs -f job/$(1))"
	@while :; do \
		state=$$(kubectl get job/$(1) -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}') || exit 1; \
		case "$$state" in *Complete*) echo "job/$(1) complete"; break;; \
			*Failed*) kubectl logs -l batch.kubernetes.io/job-name=$(1) --prefix --tail=30; \
				echo "job/$(1) failed" >&2; exit 1;; esac; \
		kubectl wait --for=condition=complete --timeout=60s job/$(1) >/dev/null 2>&1 || true; \
	done
endef

## deploy-<stage> [OVERLAY=local|cloud]: run one stage as a Job and wait for it: any Job of k8s/base
## (train, import-model, fit-factors, ..., lds; `make deploy-x` lists them). A new deploy replaces the stage's old Job (the stage itself skips outputs that
## are already complete). The steps of the sharded targets below deploy the same way.
deploy-%: $(if $(filter local,$(OVERLAY)),deploy-local-storage)
	$(if $(filter $*,$(K8S_JOBS)),,$(error unknown stage or Job '$*': one of $(K8S_JOBS)))
	$(call deploy_job,$*)

## deploy-lds [OVERLAY=local|cloud]: the linear datamodeling score: lds-retrain (a pod per subset),
## then lds (correlates the subsets' measurements with the scores and the baselines).
deploy-lds: deploy-lds-retrain
	$(call deploy_job,lds)

## deploy-fit-factors-sharded [OVERLAY=local|cloud]: fit-factors spread over pods, four Jobs in
## turn, each waited for: fit-factors-covariance (a pod per data partition),
## fit-factors-eigendecomposition, fit-factors-lambda (a pod per partition), fit-factors (aggregates).
deploy-fit-factors-sharded:
	@for job in $(K8S_FIT_FACTORS_SHARDED); do $(MAKE) --no-print-directory deploy-$$job TAG=$(TAG) || exit 1; done

## deploy-compute-scores-sharded [OVERLAY=local|cloud]: compute-scores spread over pods:
## compute-scores-shards (a pod per data partition), then compute-scores (aggregates).
deploy-compute-scores-sharded:
	@for job in $(K8S_COMPUTE_SCORES_SHARDED); do $(MAKE) --no-print-directory deploy-$$job TAG=$(TAG) || exit 1; done

## deploy-build-index-sharded [OVERLAY=local|cloud]: the gradient index built over pods:
## build-index-shards (a pod per INDEX_PARTITIONS), then build-index (publishes). deploy-build-index
## builds it in one pod; deploy-query asks it (docs/guides/ask-new-questions.md).
deploy-build-index-sharded:
	@for job in $(K8S_BUILD_INDEX_SHARDED); do $(MAKE) --no-print-directory deploy-$$job TAG=$(TAG) || exit 1; done
