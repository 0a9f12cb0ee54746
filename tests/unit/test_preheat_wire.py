"""The preheat work a node is given: its blobs, a private one with the image it is
pulled as (the node proves its own pull rights first); hostile bodies refused."""

from __future__ import annotations

import pytest

from swarmpull.core.fields import ProtocolError
from swarmpull.core.preheat import PreheatBlob, PreheatWork, parse_preheat_work

PUBLIC = PreheatBlob("sha256-" + "ab" * 32, 1024)
PRIVATE = PreheatBlob("sha256-" + "cd" * 32, 2048, "registry.example:5000/team/private")


def test_work_round_trips_and_only_a_private_blob_names_its_image():
    work = PreheatWork(7, [PUBLIC, PRIVATE], 2.0)
    body = work.to_json()
    assert "image" not in body["layers"][0] and body["layers"][1]["image"] == PRIVATE.image
    assert parse_preheat_work(body) == work


@pytest.mark.parametrize("image", ["", 7, ["x"], "x" * 513])
def test_a_bad_image_is_refused(image):
    body = PreheatWork(1, [PRIVATE]).to_json()
    body["layers"][0]["image"] = image
    with pytest.raises(ProtocolError, match="image"):
        parse_preheat_work(body)
