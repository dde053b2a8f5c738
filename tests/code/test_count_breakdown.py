"""scripts/count_breakdown.py: the ideal-observer proxy behind docs/pretraining.md's counting table."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import count_breakdown  # noqa: E402
from PIL import Image  # noqa: E402

from tokenfocus.pretrain.curriculum import Pool  # noqa: E402
from tokenfocus.render import BACKGROUNDS  # noqa: E402


def test_blob_counting_reads_one_group_scenes_and_fails_on_an_empty_image():
    pool = Pool.draw(40, 64, 5, max_groups=1)
    assert count_breakdown.visible_counts(pool)["groups=1"][0] >= 0.95
    # the same scenes drawn as their bare backgrounds: no blobs, so no group's count is read right
    blank = Pool(
        pool.scenes,
        [
            Image.new("RGB", im.size, BACKGROUNDS[s.background])
            for s, im in zip(pool.scenes, pool.images, strict=True)
        ],
    )
    assert count_breakdown.visible_counts(blank)["all"][0] == 0.0
