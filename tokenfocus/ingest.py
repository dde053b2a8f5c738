"""Importing the EvalMuse-40K release as downloaded: join the image archive's parts, check it,
unpack it safely, validate the result, and version it with DVC.

The release holds ``train_list.json``, ``test.json`` and the images as a zip split into parts
(``images.zip.part-aa``, ``-ab``, ...; joined in name order). A checksum, when one is given (the
``--sha256`` option, or an ``images.zip.sha256`` file beside the parts), must match the joined
archive; either way the archive's own CRCs are checked before anything is unpacked, and its
SHA-256 goes into the import report. Nothing is written over an existing dataset folder: the new one
is built beside it and swapped in only once it is complete and valid.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path, PurePosixPath

from tokenfocus.config import ValidateConfig
from tokenfocus.evalmuse import write_json_atomic

LISTS = ("train_list.json", "test.json")
OPTIONAL = ("eval.json", "prompt_t2i.json")
PARTS = "images.zip.part-*"


class IngestError(ValueError):
    """A release that cannot be imported; the message names the file and the problem."""


def _join_parts(src: Path, dest: Path) -> str:
    """Concatenate the archive's parts into ``dest``; return its SHA-256."""
    parts = sorted(src.glob(PARTS))
    if not parts:
        whole = src / "images.zip"
        if not whole.exists():
            raise IngestError(f"{src}: no images.zip.part-* files and no images.zip")
        parts = [whole]
    h = hashlib.sha256()
    with dest.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
    return h.hexdigest()


def _unpack(archive: Path, images: Path) -> int:
    """Unpack the images under ``images`` (a zip's top ``images/`` folder is dropped); refuse any
    member that would land outside it. Returns the number of files."""
    try:
        return _extract(archive, images)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise IngestError(
            f"images archive: damaged or incomplete ({type(exc).__name__}: {exc}); are all the parts there?"
        ) from None


def _extract(archive: Path, images: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        bad = zf.testzip()
        if bad is not None:
            raise IngestError(f"images archive: {bad} fails its CRC check (a damaged or missing part?)")
        n = 0
        for info in zf.infolist():
            if info.is_dir():
                continue
            rel = PurePosixPath(info.filename)
            if rel.parts and rel.parts[0] == "images":
                rel = PurePosixPath(*rel.parts[1:])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise IngestError(f"images archive: {info.filename!r} points outside the images folder")
            target = images.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as f, target.open("wb") as out:
                shutil.copyfileobj(f, out)
            n += 1
    return n


def import_release(
    src: str | Path,
    out: str | Path,
    cfg: ValidateConfig,
    *,
    sha256: str | None = None,
    version: bool = True,
) -> dict:
    """Import a downloaded EvalMuse-40K release from ``src`` into the dataset folder ``out``.

    Args:
        src: the folder with the lists and the archive's parts.
        out: the dataset folder to create or replace (e.g. ``data``).
        cfg: the validation settings (its report goes to ``cfg.report``).
        sha256: the archive's expected SHA-256 (else ``images.zip.sha256`` in ``src``, if any).
        version: run ``dvc add`` on ``out`` afterwards.

    Returns:
        The import report: files, counts, the archive's checksum, validation and versioning.
    """
    from tokenfocus.validate import main as validate

    src, out = Path(src), Path(out)
    for name in LISTS:
        if not (src / name).is_file():
            raise IngestError(f"{src}: {name} is missing")
    if sha256 is None and (src / "images.zip.sha256").exists():
        sha256 = (src / "images.zip.sha256").read_text().split()[0]
    staging = out.with_name(out.name + ".import")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        joined = staging / "images.zip"
        digest = _join_parts(src, joined)
        if sha256 is not None and digest != sha256.lower():
            raise IngestError(f"images archive: SHA-256 {digest} does not match the expected {sha256}")
        count = _unpack(joined, staging / "images")
        joined.unlink()
        for name in (*LISTS, *(n for n in OPTIONAL if (src / n).exists())):
            shutil.copy2(src / name, staging / name)
        report = validate(cfg, str(staging), cfg.report)
        if not report.success:
            raise IngestError(f"the imported data fails validation: {report.summary()}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # complete and valid: only now does it replace the old folder
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.is_symlink():
        out.unlink()
    elif out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    summary = {
        "source": str(src),
        "out": str(out),
        "images": count,
        "pairs": {n: len(json.loads((out / n).read_text())) for n in LISTS},
        "archive_sha256": digest,
        "checksum_checked": sha256 is not None,
        "validation": cfg.report,
        "versioned": False,
    }
    if version:
        from tokenfocus.repro import dvc_executable

        done = subprocess.run([dvc_executable(), "add", "-q", str(out)], capture_output=True, text=True)
        if done.returncode:
            raise IngestError(f"`dvc add {out}` failed: {done.stderr.strip()[-500:]}")
        summary["versioned"] = True
    write_json_atomic(Path(cfg.report).with_name("import.json"), summary)
    return summary
