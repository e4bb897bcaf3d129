"""The self-contained HTML gallery: parses, one row per painting, the expected images (decoded
and compared with independently drawn ones), no external sources, escaped names, atomic write."""

from __future__ import annotations

import base64
import io
import os
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from xray_flax.hidden_art import gallery
from xray_flax.hidden_art.metrics import recovery_metrics


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.images, self.external, self.tags = [], [], [], []
        self._row = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        for name in ("src", "href"):
            if name in attrs and not (
                tag == "img" and name == "src" and attrs[name].startswith("data:image/png;base64,")
            ):
                self.external.append((tag, name, attrs[name]))
        if tag == "tr" and attrs.get("class") == "painting":
            self._row = {"name": attrs["data-name"], "cells": 0, "images": []}
            self.rows.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._row["cells"] += 1
        elif tag == "img":
            self.images.append(attrs)
            if self._row is not None:
                self._row["images"].append(attrs)

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None


def _decode(uri):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def _jet(values):
    """MATLAB jet of min-max scaled values, written out independently."""
    x = (values - values.min()) / (values.max() - values.min())
    x = np.round(x * 255.0) / 255.0
    return np.round(255.0 * np.stack([np.clip(1.5 - np.abs(4.0 * x - c), 0, 1) for c in (3.0, 2.0, 1.0)], -1))


def _entries(size=24):
    rng = np.random.default_rng(0)
    truth = np.zeros((size, size), np.float32)
    truth[4:12, 6:18] = 1.0
    scene = {
        "name": "first <b>painting</b>",
        "rgb": rng.uniform(size=(size, size, 3)).astype(np.float32),
        "hidden": truth,
        "hidden_mask": truth > 0.25,
    }
    plain = {"map": rng.uniform(size=(size, size)), "per_band": rng.uniform(size=(size, size, 3))}
    siamese = {
        "map": truth + 0.1 * rng.uniform(size=(size, size)),
        "per_band": rng.uniform(size=(size, size, 3)),
        "collage": rng.integers(-1, 3, size=(size, size)),
        "strength": rng.uniform(size=(size, size)),  # not drawn
    }
    first = gallery.painting_entry(scene, {"plain": plain, "siamese": siamese})
    # A second painting with no truth and only the plain method.
    second = gallery.painting_entry(
        {"name": "second", "rgb": rng.uniform(size=(size, size, 3)).astype(np.float32)},
        {"plain": {"map": rng.uniform(size=(size, size)), "per_band": rng.uniform(size=(size, size, 3))}},
    )
    return first, second


def test_gallery_rows_images_and_no_external_sources(tmp_path):
    entries = _entries()
    path = tmp_path / "gallery.html"
    counts = gallery.write_gallery(path, entries, title="test <gallery>", max_side=64)
    text = path.read_text()
    parser = _Collector()
    parser.feed(text)
    parser.close()
    # Columns: RGB, truth | plain: map, overlay, 3 bands | siamese: map, overlay, collage, 3 bands.
    assert [row["name"] for row in parser.rows] == ["first <b>painting</b>", "second"]
    assert [row["cells"] for row in parser.rows] == [1 + 13, 1 + 13]
    assert [len(row["images"]) for row in parser.rows] == [13, 6]  # second: RGB + plain's 5
    assert counts == {"paintings": 2, "images": 19} and len(parser.images) == 19
    assert parser.external == []
    assert "script" not in parser.tags and "b" not in parser.tags  # names and title are escaped
    assert "Content-Security-Policy" in text
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.html"]  # no temporary left behind


def test_gallery_images_are_the_expected_pictures():
    first, _ = _entries()
    parser = _Collector()
    parser.feed(gallery.render_gallery([first], max_side=64))
    images = parser.rows[0]["images"]
    rgb, truth_img, plain_map, plain_overlay = (_decode(images[i]["src"]) for i in range(4))
    np.testing.assert_array_equal(rgb, np.round(first["rgb"] * 255).astype(np.uint8))
    assert np.abs(plain_map.astype(int) - _jet(first["methods"]["plain"]["map"])).max() <= 1
    np.testing.assert_array_equal(truth_img[5, 7], [128, 0, 0])  # jet(1.0): dark red
    np.testing.assert_array_equal(truth_img[0, 0], [0, 0, 128])  # jet(0.0): dark blue
    luma = first["rgb"] @ np.array([0.2989, 0.5870, 0.1140])
    luma = (luma - luma.min()) / (luma.max() - luma.min())
    np.testing.assert_allclose(plain_overlay[..., 0], np.round(luma * 255), atol=1)
    # Per-band columns share one scale over all bands of the painting and method.
    per_band = first["methods"]["plain"]["per_band"]
    shared = _jet(per_band)
    for band in range(3):
        assert np.abs(_decode(images[4 + band]["src"]).astype(int) - shared[..., band, :]).max() <= 1
    # The collage: the grey RGB below the threshold, jet colours of the band index elsewhere.
    collage_img = _decode(images[2 + 5 + 2]["src"]).astype(int)
    index = first["methods"]["siamese"]["collage"]
    lut = _jet(np.array([0.0, 0.5, 1.0]))
    grey = np.round(np.clip(first["rgb"] @ np.array([0.2989, 0.5870, 0.1140]), 0, 1) * 255)
    want = np.where((index < 0)[..., None], grey[..., None], lut[np.maximum(index, 0)])
    assert 0 < (index < 0).mean() < 1
    assert np.abs(collage_img - want).max() <= 1
    assert "siamese" in images[2 + 5 + 2]["alt"] and "collage" in images[2 + 5 + 2]["alt"]


def test_metrics_table_and_shrinking():
    first, second = _entries(size=40)
    text = gallery.render_gallery([first, second], max_side=16)
    want = recovery_metrics(first["methods"]["siamese"]["map"], first["truth"], first["truth"] > 0.25)
    assert f"{want['auroc']:.4f}" in text and f"{want['correlation']:.4f}" in text
    assert text.count("mean over paintings") == 2  # one summary row per method
    parser = _Collector()
    parser.feed(text)
    sizes = {(int(img["width"]), int(img["height"])) for img in parser.images}
    assert sizes == {(16, 16)}
    assert {_decode(img["src"]).shape for img in parser.images} == {(16, 16, 3)}


def test_gallery_errors_name_the_painting_and_method():
    first, _ = _entries()
    first["methods"]["plain"]["map"] = np.zeros((5, 5))
    with pytest.raises(ValueError, match=r"painting 'first <b>painting</b>', method 'plain': 'map'"):
        gallery.render_gallery([first])
    with pytest.raises(ValueError, match="at least one painting"):
        gallery.render_gallery([])
    with pytest.raises(ValueError, match="no 'map'"):
        gallery.painting_entry({"name": "x", "rgb": np.zeros((4, 4, 3))}, {"plain": {"per_band": np.zeros((4, 4, 1))}})
    assert not os.path.exists("gallery.html")
