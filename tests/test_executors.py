"""Executors: the local process pool leaves no orphans, and a Ray cluster gives the local bytes.

The Ray tests share one local Ray instance with 2 CPUs (the session fixture ``ray_cluster``):
synthesize runs in this process on it, extract runs as a separate command that joins it by
address, as a user's run joins a cluster started with ``ray start --head``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import params_for

from av_grounding import rdshq
from av_grounding.executors import ExecutorError, run_items
from av_grounding.pipeline.extract import extract
from av_grounding.pipeline.synthesize import synthesize

from test_extract import tree_digest
from test_s3 import upload

REPO = Path(__file__).resolve().parents[1]
SETTLE_S = 60  # longest wait for processes to appear or to go


def children(pid: int) -> list[int]:
    """Living child processes of ``pid`` (zombies count as gone), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, parent = fields[0], int(fields[1])
        if parent == pid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, what: str):
    deadline = time.monotonic() + SETTLE_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting {SETTLE_S} s for {what}"
        time.sleep(0.2)
    return value


def assert_workers_die_with_their_parent(command: list[str]) -> None:
    """Start ``command``, wait until it has two worker processes, SIGKILL it: both must exit."""
    main = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        workers = wait_for(lambda: len(found := children(main.pid)) >= 2 and found, "two worker processes")
        main.send_signal(signal.SIGKILL)
        main.wait(timeout=SETTLE_S)
        wait_for(lambda: not any(alive(pid) for pid in workers), f"workers {workers} to exit after their parent")
    finally:
        main.kill()
        for pid in filter(alive, workers):  # a failed run leaves them: end them here
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_pool_workers_exit_when_the_main_process_is_killed():
    script = textwrap.dedent("""
        import time
        from av_grounding.executors import run_items

        def wait(seconds):
            time.sleep(seconds)

        run_items(wait, [(600,)] * 4, workers=2, desc="wait")
    """)
    assert_workers_die_with_their_parent([sys.executable, "-c", script])


def test_an_unknown_executor_fails_before_any_work():
    with pytest.raises(ExecutorError, match="executor must be one of"):
        run_items(print, [("never",)], 1, "none", executor="slurm")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance with 2 CPUs, started once (Ray takes seconds to start): its address.
    This process's tasks get the fake credentials the local S3 server accepts (``aws_env``), as
    the nodes of a real cluster get theirs from their environment."""
    import ray

    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}
    ray.init(num_cpus=2, object_store_memory=100 * 1024 ** 2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": credentials})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_ray_synthesize_gives_the_local_bytes(ray_cluster, synthetic_root, small_params, tmp_path):
    import dataclasses

    summary = synthesize(dataclasses.replace(small_params, executor="ray"), tmp_path / "synthetic")
    assert summary["clips"] == small_params.num_clips
    assert tree_digest(tmp_path / "synthetic") == tree_digest(synthetic_root)


def test_ray_extract_joins_the_cluster_gives_the_local_bytes_and_reports_failures(
        ray_cluster, synthetic_root, small_params, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    clip_ids = sorted(p.stem for p in (root / "all_object_info").glob("*.tar"))
    broken = Path(rdshq.video_path(str(root), "pinhole", "camera_front_wide_120fov", clip_ids[0]))
    broken.write_bytes(broken.read_bytes()[:2000])
    local = extract(params_for(root, small_params, workers=2, max_failed_fraction=0.5), tmp_path / "local",
                    tmp_path / "local.json")
    command = [sys.executable, str(REPO / "stages" / "extract.py"), "--params", str(tmp_path / "none.yaml"),
               "--input-root", str(root), "--cameras", ",".join(small_params.cameras), "--skip-frames", "7",
               "--max-failed-fraction", "0.5", "--executor", "ray", "--ray-address", ray_cluster,
               "--output", str(tmp_path / "ray"),
               "--metrics", str(tmp_path / "ray.json"), "--timing", str(tmp_path / "rate.json")]
    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert local["items_failed"] == 1 and local["frames_written"] == 3 * 4
    failure = f"FAILED {clip_ids[0]}/camera_front_wide_120fov: VideoError: {broken}"
    assert failure in run.stderr, run.stderr
    assert tree_digest(tmp_path / "ray") == tree_digest(tmp_path / "local")
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "local.json").read_bytes()
    rate = json.loads((tmp_path / "rate.json").read_text())
    assert rate["executor"] == "ray" and rate["cores"] == 2 and rate["items_run"] == 3
    assert rate["frames_written"] == 12 and rate["frames_per_core_s"] > 0 and rate["frames_per_cpu_s"] > 0


def test_ray_workers_read_s3_inputs(ray_cluster, extracted, synthetic_root, small_params, s3_endpoint, aws_env,
                                    tmp_path):
    upload(synthetic_root, s3_endpoint, "cluster", "clips")
    params = params_for(synthetic_root, small_params, input_root="s3://cluster/clips", s3_endpoint_url=s3_endpoint,
                        executor="ray")
    summary = extract(params, tmp_path / "ray", tmp_path / "ray" / "metrics.json")  # as the local run
    assert summary["items_failed"] == 0 and summary["frames_written"] == extracted[1]["frames_written"] > 0
    assert tree_digest(tmp_path / "ray") == tree_digest(extracted[0])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_extract_workers_exit_when_the_stage_is_killed(synthetic_root, small_params, tmp_path):
    """The extract stage itself, its two workers stuck opening videos (named pipes that no one
    writes), killed with SIGKILL: the workers go too."""
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    for video in root.glob("pinhole_*/*.mp4"):
        video.unlink()
        os.mkfifo(video)
    command = [sys.executable, str(REPO / "stages" / "extract.py"), "--params", str(tmp_path / "none.yaml"),
               "--input-root", str(root), "--cameras", ",".join(small_params.cameras), "--workers", "2",
               "--output", str(tmp_path / "out"), "--metrics", str(tmp_path / "extract.json")]
    assert_workers_die_with_their_parent(command)
