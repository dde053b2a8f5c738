"""`tokenfocus data import`: a release made the way EvalMuse-40K ships (lists, a zip of the images
split into parts), imported, validated and versioned with real `dvc`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

TF = str(Path(sys.executable).with_name("tokenfocus"))
DVC = str(Path(sys.executable).with_name("dvc"))


def _release(small_data: Path, dest: Path, part_size: int = 40_000) -> str:
    """The small dataset as a release: lists beside ``images.zip.part-aa, -ab, ...``."""
    dest.mkdir()
    for name in ("train_list.json", "test.json"):
        shutil.copy2(small_data / name, dest / name)
    whole = dest / "whole.zip"
    with zipfile.ZipFile(whole, "w") as zf:
        for f in sorted((small_data / "images").rglob("*.png")):
            zf.write(f, "images/" + f.relative_to(small_data / "images").as_posix())
    data = whole.read_bytes()
    whole.unlink()
    for k, start in enumerate(range(0, len(data), part_size)):
        (dest / f"images.zip.part-a{chr(ord('a') + k)}").write_bytes(data[start : start + part_size])
    assert len(list(dest.glob("images.zip.part-*"))) > 1
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def project(tmp_path):
    d = tmp_path / "proj"
    d.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=d, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=d, check=True)
    shutil.copy2(Path(__file__).resolve().parents[2] / "params.yaml", d / "params.yaml")
    return d


def _import(project, *args):
    return subprocess.run(
        [TF, "data", "import", *args], cwd=project, capture_output=True, text=True, env=os.environ.copy()
    )


def test_a_release_in_parts_is_joined_checked_unpacked_validated_and_versioned(small_data, tmp_path, project):
    digest = _release(small_data, tmp_path / "release")
    out = _import(project, str(tmp_path / "release"), "--sha256", digest)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    n_images = len(list((small_data / "images").rglob("*.png")))
    assert (
        summary["images"] == n_images and summary["archive_sha256"] == digest and summary["checksum_checked"]
    )
    assert summary["versioned"] and (project / "data.dvc").exists()
    assert (
        "up to date"
        in subprocess.run([DVC, "status", "data.dvc"], cwd=project, capture_output=True, text=True).stdout
    )
    for f in (small_data / "images").rglob("*.png"):  # byte for byte, at the same relative path
        assert (
            project / "data" / "images" / f.relative_to(small_data / "images")
        ).read_bytes() == f.read_bytes()
    assert json.loads((project / "eval" / "validation.json").read_text())["success"]


def test_a_wrong_checksum_or_a_missing_part_is_refused_and_the_old_data_stays(small_data, tmp_path, project):
    digest = _release(small_data, tmp_path / "release")
    (project / "data").mkdir()
    (project / "data" / "keep.txt").write_text("the dataset already here")
    wrong = _import(project, str(tmp_path / "release"), "--sha256", "0" * 64, "--no-dvc")
    assert wrong.returncode == 1 and "does not match the expected" in wrong.stderr
    (tmp_path / "release" / "images.zip.part-ab").unlink()  # a part lost in the download
    missing = _import(project, str(tmp_path / "release"), "--no-dvc")
    assert missing.returncode == 1 and "images archive" in missing.stderr
    assert "Traceback" not in wrong.stderr + missing.stderr
    assert (project / "data" / "keep.txt").read_text() == "the dataset already here"
    assert not (project / "data.import").exists()
    assert digest
