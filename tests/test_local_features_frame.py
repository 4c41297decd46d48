"""RootSIFT's detection side: keypoints stay in the decoded image's frame, and indexes made before the setting keep theirs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cbir.features.local import LocalFeatureConfig
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher

from test_verify import photos, scene, warped  # noqa: F401  (photos is a fixture)


def _disc(width: int, height: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    """A grey RGB image, dark but for one bright disc: SIFT's strongest blob sits at its centre."""
    image = np.full((height, width, 3), 30, np.uint8)
    cv2.circle(image, centre, radius, (230, 230, 230), -1, lineType=cv2.LINE_AA)
    return image


@pytest.mark.parametrize("detect_side", [256, 512])
@pytest.mark.parametrize("size, centre, radius, tolerance", [((400, 300), (290, 110), 10, 3.0), ((1024, 768), (700, 220), 12, 6.0)])
def test_keypoints_are_in_the_decoded_images_frame(detect_side, size, centre, radius, tolerance):
    # Detected on the image scaled down to detect_side: coordinates come back in the image's own pixels.
    width, height = size
    features = LocalFeatureConfig(detect_side=detect_side).extractor().features(_disc(width, height, centre, radius))
    assert len(features) >= 1
    pixels = features.xy * max(width, height)  # normalised by the longer side
    nearest = np.min(np.linalg.norm(pixels - np.float32(centre), axis=1))
    assert nearest <= tolerance, (pixels[:5], centre)
    assert pixels[:, 0].max() < width and pixels[:, 1].max() < height


def test_detect_side_round_trips_and_an_old_config_reads_as_it_was_made():
    assert LocalFeatureConfig().detect_side == 512  # 256 measured worse (docs/verify.md)
    config = LocalFeatureConfig(detect_side=512)
    assert LocalFeatureConfig.from_dict(config.to_dict()) == config
    assert LocalFeatureConfig.from_dict({"kind": "rootsift", "max_keypoints": 256, "max_side": 400}).detect_side == 400
    with pytest.raises(Exception, match="detect_side"):
        LocalFeatureConfig(detect_side=10)


def test_an_index_made_before_the_setting_still_verifies_as_it_was_made(photos, tmp_path):  # noqa: F811
    index_dir = tmp_path / "indexes"
    old = {"kind": "rootsift", "max_keypoints": 256, "max_side": 512}  # what a manifest held before detect_side
    index_folder(photos, "p", index_dir, local_features={**old, "detect_side": 512}, workers=1)
    manifest_path = index_dir / "p" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["local_features"] = old
    manifest_path.write_text(json.dumps(manifest))
    query = tmp_path / "query.png"
    cv2.imwrite(str(query), warped(scene(4)))

    with Searcher.open("p", index_dir, verify=5) as searcher:
        assert searcher.local_config.detect_side == 512  # the query is described exactly as the collection was
        found = searcher.query(str(query), k=3).results
    assert found[0].path.endswith("scene-4.png") and found[0].verified
    # Asking for local features again keeps the index's own setting: nothing is recomputed.
    summary = index_folder(photos, "p", index_dir, local_features=True)
    assert summary.local_features_added == 0
    assert json.loads(manifest_path.read_text())["local_features"] == old
