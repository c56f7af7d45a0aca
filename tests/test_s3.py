"""An s3:// input served by a real S3-compatible server (moto_server) gives byte-identical output."""

from __future__ import annotations

from pathlib import Path

import pytest
import s3fs

from av_grounding.local_s3 import moto_server
from av_grounding.params import ExtractParams
from av_grounding.pipeline.extract import extract
from av_grounding.rdshq import LayoutError
from av_grounding.storage import StorageError

from test_extract import tree_digest


def upload(root: Path, endpoint: str, bucket: str, prefix: str) -> None:
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(bucket)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{bucket}/{prefix}/{path.relative_to(root)}")


def test_s3_input_matches_local_input(synthetic_root, small_params, s3_endpoint, aws_env, tmp_path):
    upload(synthetic_root, s3_endpoint, "rdshq", "clips")
    ids_file = tmp_path / "ids.txt"
    clip_ids = sorted(p.stem for p in (synthetic_root / "all_object_info").glob("*.tar"))
    ids_file.write_text("\n".join(clip_ids) + "\n")
    upload_ids = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    upload_ids.put_file(str(ids_file), "rdshq/ids.txt")
    common = dict(cameras=small_params.cameras, skip_frames=7, workers=2)
    local = extract(ExtractParams(input_root=str(synthetic_root), **common), tmp_path / "local")
    remote = extract(ExtractParams(input_root="s3://rdshq/clips", s3_endpoint_url=s3_endpoint,
                                   sequence_ids_file="s3://rdshq/ids.txt", **common), tmp_path / "remote")
    assert remote["items_failed"] == 0 and remote["frames_written"] == local["frames_written"] > 0
    assert tree_digest(tmp_path / "remote") == tree_digest(tmp_path / "local")


def test_missing_s3_clip_is_reported_with_its_url(synthetic_root, small_params, s3_endpoint, aws_env, tmp_path):
    upload(synthetic_root, s3_endpoint, "partial", "clips")
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    victim = sorted(fs.ls("partial/clips/pinhole_camera_front_wide_120fov"))[0]
    fs.rm(victim)
    metrics = extract(ExtractParams(input_root="s3://partial/clips", s3_endpoint_url=s3_endpoint,
                                    cameras=small_params.cameras, workers=1, max_failed_fraction=0.5), tmp_path / "out")
    assert metrics["items_failed"] == 1
    assert f"s3://{victim}: missing" in metrics["failures"][0].error


def test_missing_bucket_fails_once_naming_it(s3_endpoint, aws_env, tmp_path):
    with pytest.raises(LayoutError, match=r"s3://no-such-bucket/clips/all_object_info: missing \(The specified bucket "
                                          r"does not exist\); is 's3://no-such-bucket/clips' an RDS-HQ root\?"):
        extract(ExtractParams(input_root="s3://no-such-bucket/clips", s3_endpoint_url=s3_endpoint), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_credentials_fail_once_saying_access_denied(aws_env, monkeypatch, tmp_path):
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")  # this moto_server checks credentials
    with moto_server() as endpoint, pytest.raises(StorageError, match=r"s3://rdshq/clips: access denied "
                                                                      r"\(.*Access Key Id.*\); check the credentials"):
        extract(ExtractParams(input_root="s3://rdshq/clips", s3_endpoint_url=endpoint), tmp_path / "out")
    assert not (tmp_path / "out").exists()
