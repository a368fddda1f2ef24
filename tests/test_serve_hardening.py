"""The upload page under hostile or careless input: size bombs, other sites, odd numbers, crowds."""
from __future__ import annotations

import io
import logging
import re
import resource
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from pipeline.cli import main
from pipeline.errors import FormProblem
from pipeline.server import KeptImages, ServeConfig, create_app


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def app(model_dir: Path):
    return create_app(model_dir, ServeConfig(max_requests=2, kept_images=2))


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app)


@pytest.fixture(scope="module")
def patch() -> bytes:
    rgb = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(rgb))


def post(client: TestClient, data: bytes, name: str = "patch.png", **fields: str):
    """POST /explain with the file `data` and the form `fields`."""
    return client.post("/explain", files={"image": (name, data, "image/png")}, data=fields)


def test_a_dimension_bomb_is_refused_from_its_header(client) -> None:
    bomb = png_bytes(Image.new("L", (8000, 8000)))
    assert len(bomb) < 300_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = post(client, bomb, "bomb.png")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert response.status_code == 413 and "bomb.png: 8000 x 8000 px" in response.text
    assert grown_mb < 100, f"the refused bomb raised peak memory by {grown_mb:.0f} MB: it was decoded"


def test_a_form_posted_by_another_site_is_refused(client, patch) -> None:
    response = client.post("/explain", files={"image": ("patch.png", patch, "image/png")},
                           headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and "https://evil.example is refused" in response.text
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"},
                    {"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-origin"}):
        response = client.post("/explain", files={"image": ("patch.png", patch, "image/png")}, headers=headers)
        assert response.status_code == 403, headers
    own = client.post("/explain", files={"image": ("patch.png", patch, "image/png")}, data={"mpp": "1"},
                      headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})     # a no-referrer page's own form
    assert own.status_code == 200
    same = client.post("/explain", files={"image": ("patch.png", patch, "image/png")}, data={"mpp": "1"},
                       headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200


@pytest.mark.parametrize("mpp", ["1e300", "nan", "inf", "-1", "0", "0.001", "abc"])
def test_out_of_range_resolutions_are_400(client, patch, mpp) -> None:
    response = post(client, patch, mpp=mpp)
    assert response.status_code == 400 and "within 0.05-20" in response.text


@pytest.mark.parametrize(("field", "value"), [("method", "nosuch"), ("target", "nosuch")])
def test_unknown_choices_are_400(client, patch, field, value) -> None:
    response = post(client, patch, **{field: value})
    assert response.status_code == 400 and "unknown" in response.text


def test_requests_beyond_the_cap_are_503(app, client, patch) -> None:
    slots = app.state.service.slots
    assert slots.acquire(blocking=False) and slots.acquire(blocking=False)    # two explanations in flight
    try:
        response = post(client, patch, mpp="1")
        assert response.status_code == 503 and "busy" in response.text
    finally:
        slots.release()
        slots.release()
    assert post(client, patch, mpp="1").status_code == 200


def test_uploads_are_never_spooled_to_disk(client, monkeypatch) -> None:
    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    noise = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)))
    assert len(noise) > 2 * 1024 * 1024                                   # past Starlette's 1 MB spool
    response = post(client, noise, "noise.png", mpp="0.1")
    assert response.status_code == 200


def test_the_image_is_kept_for_another_class_and_every_method(client, patch, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.server"):
        first = post(client, patch)
    assert first.status_code == 200
    assert "assumed the model's" in caplog.text and "records no microscope resolution" in first.text
    image_id = re.search(r'name="image_id" value="([0-9a-f]{64})"', first.text).group(1)
    again = client.post("/explain", files={"image": ("", b"", "application/octet-stream")},
                        data={"image_id": image_id, "target": "top5", "method": "all"})
    assert again.status_code == 200 and "patch.png" in again.text
    methods = set(re.findall(r'<figure class="overlay" data-method="([a-z_]+)"', again.text))
    classes = re.findall(r'<section class="card target-section" data-class="([^"]+)"', again.text)
    assert len(methods) >= 2 and len(classes) == 2                        # the small model has 2 classes
    gone = client.post("/explain", files={"image": ("", b"", "application/octet-stream")},
                       data={"image_id": "0" * 64})
    assert gone.status_code == 400 and "choose the file again" in gone.text


def test_kept_images_are_bounded() -> None:
    kept = KeptImages(2)
    keys = [kept.put(f"{i}.png", bytes([i])) for i in range(3)]
    assert kept.get(keys[2]) == ("2.png", b"\x02") and kept.get(keys[1]) == ("1.png", b"\x01")
    with pytest.raises(FormProblem, match="no longer kept"):
        kept.get(keys[0])


def test_without_a_model_only_the_reports_and_viewer_are_served(report_archive) -> None:
    client = TestClient(create_app(None, ServeConfig(reports=report_archive["index"].parent)))
    assert client.get("/", follow_redirects=False).headers["location"] == "/reports/"
    assert client.get("/reports/slides/positive/viewer/").status_code == 200
    assert client.post("/explain").status_code in (404, 405)
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2 and "give --model" in result.output


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` 8-bit grey px (no pixel data follows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_a_huge_image_is_refused_quoting_the_servers_own_limit(client) -> None:
    response = post(client, png_header(30000, 30000), "huge.png")        # beyond Pillow's own bomb limit
    assert response.status_code == 413
    assert f"huge.png: more than {ServeConfig().max_pixels:,} pixels" in response.text
    assert "decompression bomb" not in response.text.lower() and "178956970" not in response.text
