"""Local disk: the plan's disk_bytes of each stage (a build_index pod's: its own shards alone), the
refusal of a stage whose need exceeds DISK_GIB before it starts, and a build_index pod restoring
its own staged shards alone. The manifests' emptyDir limits against the plan: tests/test_manifests.py."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from influence_core.artifacts import Index
from influence_core.errors import ConfigError
from influence_core.plan import GIB, SHARD_HEADER_BYTES, check_fits, make_plan, render
from influence_core.settings import BuildIndexSettings, PlanSettings, QueryIndexSettings, load_settings
from tests.conftest import EXACT, jobs_in_process, one_line_refusal


def pod(settings: PlanSettings, shard: int) -> PlanSettings:
    """The plan's settings in a build_index pod: SHARD_INDEX set (unvalidated, as check_fits makes
    them: the other stages' partition counts would refuse it)."""
    return PlanSettings.model_construct(**{**settings.model_dump(), "shard_index": shard})


def test_every_row_says_its_local_disk_and_a_build_index_pod_counts_its_own_shards(tmp_path):
    common = {"artifacts_uri": str(tmp_path / "nothing"), "num_examples": 1000, "index_shard_size": 100,
              "index_partitions": 4, "index_search": "exact"}
    settings = PlanSettings(**common)
    plan = make_plan(settings, 4)
    assert all(row["disk_bytes"] > 0 and row["fits_disk"] for row in plan["stages"].values()), plan["stages"]
    assert plan["device"]["disk_bytes"] == plan["device"]["detected_disk_bytes"] > 0  # no DISK_GIB: the free space
    assert "disk GiB" in render(plan)
    row = plan["stages"]["build_index"]
    shard = 100 * row["bytes_per_example"] + SHARD_HEADER_BYTES
    # 10 shards; pod 1 of 4 builds and holds shards 1, 5 and 9 alone, beside the model, data and factors.
    own = make_plan(pod(settings, 1), 4, "build_index")["stages"]["build_index"]["disk_bytes"]
    assert row["disk_bytes"] - own == 7 * shard
    # The query keeps the whole index in CACHE_DIR; without it, it holds one shard at a time.
    query = plan["stages"]["query"]["disk_bytes"]
    off = make_plan(PlanSettings(**common, cache_dir="off"), 4)["stages"]["query"]["disk_bytes"]
    assert query - off == row["published_bytes"]["index/index"] - shard
    assert query > row["disk_bytes"] - shard * 10  # the model, data and factors besides


def test_a_stage_whose_disk_need_exceeds_disk_gib_is_refused_in_one_line(tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    flags = ["train", f"--artifacts_uri={artifacts}", "--log_level=ERROR"]
    line = one_line_refusal(jobs_in_process(*flags, "--disk_gib=0.001"))
    assert line.startswith("error: train: needs about 0.03 GiB of local disk"), line
    assert "more than the 0.00 GiB DISK_GIB gives" in line and "FORCE_FIT=true" in line
    assert not artifacts.exists() or not any(artifacts.iterdir())  # nothing trained, nothing published
    # Without DISK_GIB, the free space of the temporary folder.
    import influence_core.plan

    monkeypatch.setattr(influence_core.plan, "disk_space", lambda: ("/scratch", 2**20))
    line = one_line_refusal(jobs_in_process(*flags))
    assert "more than the 0.00 GiB free in /scratch (DISK_GIB sets it)" in line, line


def test_a_query_or_build_whose_index_does_not_fit_the_disk_is_refused_in_one_line(indexed):
    indexed = indexed(*EXACT)  # 4 shards (30, 30, 30 and 10 examples)
    index = sum(path.stat().st_size for path in (indexed / "index/index").iterdir())
    shard = (indexed / "index/index" / Index.shard(0)).stat().st_size
    need = make_plan(PlanSettings(artifacts_uri=str(indexed)), 12, "query")["stages"]["query"]["disk_bytes"]
    assert need > index > 2 * shard
    disk = (need - index / 2) / GIB  # the model, data and factors fit, the index beside them does not
    flags = [f"--artifacts_uri={indexed}", f"--disk_gib={disk}", "--log_level=ERROR"]
    line = one_line_refusal(jobs_in_process("query", *flags))
    assert line.startswith(f"error: query: needs about {need / GIB:.2f} GiB of local disk"), line
    assert f"more than the {disk:.2f} GiB DISK_GIB gives" in line and "CACHE_DIR=off" in line
    assert not (indexed / "influence/scores_query_scores").exists()
    # CACHE_DIR=off holds one shard at a time: it fits.
    check_fits("query", load_settings(QueryIndexSettings, [*flags, "--cache_dir=off"]), 12)

    # build_index over 2 pods: a pod holds its own shards alone (pod 0: 0 and 2; pod 1: 1 and 3), the
    # run that publishes every one.
    build = PlanSettings(artifacts_uri=str(indexed), index_shard_size=30, index_partitions=2)
    whole = make_plan(build, 12, "build_index")["stages"]["build_index"]["disk_bytes"]
    own = make_plan(pod(build, 0), 12, "build_index")["stages"]["build_index"]["disk_bytes"]
    assert whole - own > shard
    flags = [f"--artifacts_uri={indexed}", "--index_shard_size=30", "--index_partitions=2",
             f"--disk_gib={(whole + own) / 2 / GIB}"]
    check_fits("build_index", load_settings(BuildIndexSettings, [*flags, "--shard_index=0"]))
    with pytest.raises(ConfigError, match=r"^build_index: needs about .* of local disk.*more pods \(INDEX_PARTITIONS"):
        check_fits("build_index", load_settings(BuildIndexSettings, flags))


def test_a_build_index_pod_restores_its_own_staged_shards_alone(small_pipeline, tmp_path, monkeypatch):
    """Pods 1 and 0 of 2 stage their shards; pod 0 run again restores its own (0 and 2) and none of
    pod 1's; the run without SHARD_INDEX, which publishes, gathers all four."""
    import influence_core.index

    artifacts = tmp_path / "artifacts"
    shutil.copytree(small_pipeline, artifacts)
    found: list[tuple[int | None, list[str]]] = []

    def build_shards(model_dir, train_dir, work_dir, settings, local, after_shard=lambda: None):
        """What the pod finds in its work folder, then its missing shards as build_shards writes them."""
        found.append((settings.shard, sorted(path.name for path in local.glob("*")) if local.exists() else []))
        local.mkdir(parents=True, exist_ok=True)
        for number in range(4):
            if settings.shard in (None, number % 2) and not (local / Index.shard(number)).exists():
                (local / Index.shard(number)).write_bytes(b"rows")
                (local / Index.search(number)).write_bytes(b"codes")
                after_shard()
        return SimpleNamespace(size=1), 100

    monkeypatch.setattr(influence_core.index, "build_shards", build_shards)
    flags = [f"--artifacts_uri={artifacts}", "--index_shard_size=30", "--index_partitions=2", "--log_level=ERROR"]
    for shard in ("1", "0", "0"):
        code, err = jobs_in_process("build_index", *flags, f"--shard_index={shard}")
        assert code == 0, err[-3000:]
    mine = [name(number) for number in (0, 2) for name in (Index.search, Index.shard)]
    assert found == [(1, []), (0, []), (0, sorted(mine))]
    code, err = jobs_in_process("build_index", *flags)
    assert code == 0, err[-3000:]
    every = [name(number) for number in range(4) for name in (Index.search, Index.shard)]
    assert found[-1] == (None, sorted(every))
    assert sorted(path.name for path in (artifacts / "index/index").glob("s*_*")) == sorted(every)  # published
