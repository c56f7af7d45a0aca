"""The DVC remote on a real S3-compatible server (moto_server), in a shrunk copy of the pipeline.

`make remote` points the copy at the bucket; `dvc push` uploads every cached output except the
dataset (`push: false`); with the cache and every output deleted, `dvc pull --allow-missing`
restores the pushed outputs byte for byte and `dvc repro` rebuilds only the dataset, identical,
from the pulled shards.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path, PurePosixPath

import pytest
import s3fs

from dvc_workspace import copy_workspace, dvc, run
from test_extract import tree_digest

PUSHED = ("synthetic", "extracted", "transformed", "filtered")
BUCKET = "av-grounding-test"


def file_md5s(folder: Path) -> set[str]:
    return {hashlib.md5(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()}


def remote_file_md5s(fs: s3fs.S3FileSystem, url: str) -> set[str]:
    """Hashes of the file objects in a DVC 3 remote (``files/md5/ab/cdef...``), directory listings aside."""
    keys = (PurePosixPath(key) for key in fs.find(f"{url}/files/md5"))
    return {key.parent.name + key.name for key in keys if not key.name.endswith(".dir")}


@pytest.mark.slow
def test_push_then_pull_into_an_empty_workspace(data_baseline, tmp_path, s3_endpoint, aws_env):
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    workspace = copy_workspace(data_baseline, tmp_path / "workspace")  # the data stages run and committed
    run(workspace, "make", "remote", "INSTALLED=", f"DVC_REMOTE_URL=s3://{BUCKET}/dvc",
        f"DVC_REMOTE_ENDPOINT={s3_endpoint}")
    data = workspace / "data"
    assert not list((data / "extracted" / "images").rglob("*.jpg")), "extract writes shards, not JPEG files"
    before = {name: tree_digest(data / name) for name in (*PUSHED, "dataset")}

    dvc(workspace, "push")
    # with the validate stage's plots, which the dataset's upstream does not need but DVC caches
    pushed = set().union(*(file_md5s(data / name) for name in PUSHED), file_md5s(workspace / "plots" / "validation"))
    dataset_images = file_md5s(data / "dataset" / "train" / "images")
    assert remote_file_md5s(fs, f"{BUCKET}/dvc") == pushed
    assert dataset_images and not dataset_images & pushed

    shutil.rmtree(workspace / ".dvc" / "cache")
    for name in (*PUSHED, "dataset"):
        shutil.rmtree(data / name)
    dvc(workspace, "pull", "--allow-missing")
    assert {name: tree_digest(data / name) for name in PUSHED} == {name: before[name] for name in PUSHED}
    assert not (data / "dataset").exists()
    assert "data/dataset" in dvc(workspace, "status", "format")

    rebuilt = dvc(workspace, "repro", "format")
    assert "Running stage 'format'" in rebuilt and "Running stage 'extract'" not in rebuilt
    assert tree_digest(data / "dataset") == before["dataset"]
