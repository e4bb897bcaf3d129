"""Multispectral readers, layouts and augmentation (xray_flax.hidden_art.data) on files the tests
write: values against the stored integers, every layout's listing and its problems, augmentation
identical across RGB, bands and truth."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from xray_flax.data import readers
from xray_flax.hidden_art import data as D


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def _rng_u16(rng, shape):
    return rng.integers(0, 65536, shape, dtype=np.uint16)


def _rng_u8(rng, shape):
    return rng.integers(0, 256, shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------------
# Single files.


@pytest.mark.parametrize("kind", ["png8", "png16", "tif8", "tif16", "bmp8"])
def test_read_band_keeps_full_range(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind.endswith("16"):
        raw, top = _rng_u16(rng, (20, 24)), 65535.0
    else:
        raw, top = _rng_u8(rng, (20, 24)), 255.0
    raw[0, 0], raw[0, 1] = 0, int(top)  # both ends of the range
    path = str(tmp_path / f"band.{kind[:3]}")
    if kind.startswith("tif"):
        tifffile.imwrite(path, raw)
    else:
        Image.fromarray(raw).save(path)
    band = D.read_band(path)
    assert band.dtype == np.float32 and band.shape == raw.shape
    np.testing.assert_array_equal(band, raw.astype(np.float32) * np.float32(1 / top))
    assert band[0, 0] == 0.0 and band[0, 1] == 1.0


def test_read_band_accepts_equal_colour_channels(tmp_path):
    grey = _rng_u8(np.random.default_rng(1), (16, 16))
    rgb = _png(tmp_path / "rgb.png", np.stack([grey] * 3, -1))
    alpha = np.full_like(grey, 255)
    rgba = _png(tmp_path / "rgba.png", np.stack([grey, grey, grey, alpha], -1))
    for path in (rgb, rgba):
        np.testing.assert_array_equal(D.read_band(path), grey * np.float32(1 / 255))


def test_read_band_refuses_colour_float_and_32bit_files(tmp_path):
    rgb = _rng_u8(np.random.default_rng(2), (16, 16, 3))
    colour = _png(tmp_path / "colour_ms_1.png", rgb)
    with pytest.raises(readers.UnsupportedImageError, match="colour_ms_1.png.*3 colour channels that differ"):
        D.read_band(colour)
    flt = str(tmp_path / "float.tif")
    tifffile.imwrite(flt, np.random.default_rng(3).random((8, 8)).astype(np.float32))
    with pytest.raises(readers.UnsupportedImageError, match="float.tif"):
        D.read_band(flt)
    u32 = str(tmp_path / "u32.tif")
    tifffile.imwrite(u32, np.arange(64, dtype=np.uint32).reshape(8, 8))
    with pytest.raises(readers.UnsupportedImageError, match="u32.tif"):
        D.read_band(u32)


def test_read_band_refuses_truncated_and_unreadable_files(tmp_path):
    path = _png(tmp_path / "whole.png", _rng_u16(np.random.default_rng(4), (64, 64)))
    data = open(path, "rb").read()
    cut = tmp_path / "cut_ms_2.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(readers.UnreadableImageError, match="cut_ms_2.png.*truncated"):
        D.read_band(cut)
    junk = tmp_path / "junk_ms_3.png"
    junk.write_bytes(b"not an image at all" * 10)
    with pytest.raises(readers.UnreadableImageError, match="junk_ms_3.png"):
        D.read_band(junk)
    with pytest.raises(readers.UnreadableImageError, match="missing.png.*not found"):
        D.read_band(tmp_path / "missing.png")


def test_read_rgb_grey_16bit_and_alpha(tmp_path):
    rng = np.random.default_rng(5)
    grey16 = _rng_u16(rng, (12, 10))
    out = D.read_rgb(_png(tmp_path / "g16.png", grey16))
    np.testing.assert_array_equal(out, np.repeat(grey16[..., None], 3, -1) * np.float32(1 / 65535))
    rgba = _rng_u8(rng, (12, 10, 4))
    np.testing.assert_array_equal(D.read_rgb(_png(tmp_path / "rgba.png", rgba)), rgba[..., :3] * np.float32(1 / 255))
    rgb16 = _rng_u16(rng, (12, 10, 3))
    tif = str(tmp_path / "x_RGB.tif")
    tifffile.imwrite(tif, rgb16, photometric="rgb")
    np.testing.assert_array_equal(D.read_rgb(tif), rgb16 * np.float32(1 / 65535))
    tifffile.imwrite(tmp_path / "grey3.tif", np.stack([rgb16[..., 1]] * 3, -1), photometric="rgb")
    np.testing.assert_array_equal(D.read_band(tmp_path / "grey3.tif"), rgb16[..., 1] * np.float32(1 / 65535))
    rgb = _rng_u8(rng, (12, 10, 3))
    bmp = str(tmp_path / "x_RGB.bmp")
    Image.fromarray(rgb).save(bmp)
    np.testing.assert_array_equal(D.read_rgb(bmp), rgb * np.float32(1 / 255))


def test_band_stack_refuses_mixed_sizes(tmp_path):
    rng = np.random.default_rng(6)
    a = _png(tmp_path / "a_ms_1.png", _rng_u16(rng, (16, 16)))
    b = _png(tmp_path / "a_ms_2.png", _rng_u16(rng, (16, 18)))
    stack = D.read_band_stack([a, a])
    np.testing.assert_array_equal(stack[..., 0], stack[..., 1])
    with pytest.raises(D.BandShapeError, match=r"a_ms_2.png: band is 16x18.*a_ms_1.png.*16x16"):
        D.read_band_stack([a, b])


# ------------------------------------------------------------------------------------------
# ArtExtract layout.


def _artextract(root, split, stems, n_bands=8, size=(16, 20), seed=0, truth=True):
    """Writes scenes; returns {stem: (rgb uint8, bands uint16 [H, W, B], hidden uint16, mask bool)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for stem in stems:
        rgb, bands = _rng_u8(rng, (*size, 3)), _rng_u16(rng, (*size, n_bands))
        _png(os.path.join(root, split, "rgb_images", f"{stem}_RGB.png"), rgb)
        for b in range(n_bands):
            _png(os.path.join(root, split, "ms_masks", f"{stem}_ms_{b + 1}.png"), bands[..., b])
        hidden = _rng_u16(rng, size)
        mask = hidden > 40000
        if truth:
            _png(os.path.join(root, split, "rgb_images", f"{stem}_hidden.png"), hidden)
            _png(os.path.join(root, split, "rgb_images", f"{stem}_hidden_mask.png"), mask.astype(np.uint8) * 255)
        out[stem] = (rgb, bands, hidden, mask)
    return out


def test_artextract_lists_and_loads_at_full_range(tmp_path):
    truth = _artextract(tmp_path, "train", ["b_scene", "a_scene"])
    _artextract(tmp_path, "val", ["c_scene"], seed=1, truth=False)
    records = D.list_artextract(tmp_path, "train")
    assert [r.name for r in records] == ["a_scene", "b_scene"]
    assert records[0].band_indices == tuple(range(1, 9))
    for r in records:
        rgb, bands, hidden, mask = truth[r.name]
        scene = D.load_scene(r)
        assert set(scene) == {"name", "rgb", "bands", "hidden", "hidden_mask"}
        np.testing.assert_array_equal(scene["rgb"], rgb * np.float32(1 / 255))
        np.testing.assert_array_equal(scene["bands"], bands * np.float32(1 / 65535))
        np.testing.assert_array_equal(scene["hidden"], hidden * np.float32(1 / 65535))
        np.testing.assert_array_equal(scene["hidden_mask"], mask)
    (val,) = D.list_scenes("artextract", tmp_path, split="val")
    assert val.name == "c_scene" and not val.hidden and "hidden" not in D.load_scene(val)


def test_artextract_band_selection_order(tmp_path):
    truth = _artextract(tmp_path, "train", ["s"])
    (record,) = D.list_artextract(tmp_path, "train", bands=(8, 2, 5))
    scene = D.load_scene(record)
    np.testing.assert_array_equal(scene["bands"], truth["s"][1][..., [7, 1, 4]] * np.float32(1 / 65535))
    with pytest.raises(readers.DataValidationError, match=r"lacks band\(s\) \[9\]"):
        D.list_artextract(tmp_path, "train", bands=(1, 9))
    with pytest.raises(ValueError, match="1-based"):
        D.list_artextract(tmp_path, "train", bands=(0, 1))


def test_artextract_lists_every_problem_at_once(tmp_path):
    _artextract(tmp_path, "train", ["good", "gappy", "orphan", "lonely"], truth=False)
    ms = tmp_path / "train" / "ms_masks"
    rgb = tmp_path / "train" / "rgb_images"
    os.remove(ms / "gappy_ms_3.png")
    os.remove(ms / "gappy_ms_6.png")
    os.remove(rgb / "orphan_RGB.png")
    for b in range(1, 9):
        os.remove(ms / f"lonely_ms_{b}.png")
    Image.fromarray(np.zeros((16, 20), np.uint16)).save(ms / "good_ms_01.png")  # duplicate of good_ms_1
    with pytest.raises(readers.DataValidationError) as info:
        D.list_artextract(tmp_path, "train")
    message = str(info.value)
    assert len(info.value.problems) == 4, message
    assert r"'gappy' lacks band(s) [3, 6]" in message
    assert "bands of 'orphan' without an RGB image" in message
    assert "lonely_RGB.png: RGB image without any band" in message
    assert "band 1 of 'good' given twice" in message


def test_artextract_missing_folder_and_size_mismatch(tmp_path):
    with pytest.raises(readers.LayoutError, match="ms_masks"):
        os.makedirs(tmp_path / "train" / "rgb_images")
        D.list_artextract(tmp_path, "train")
    _artextract(tmp_path, "val", ["s"], truth=False)
    _png(str(tmp_path / "val" / "ms_masks" / "s_ms_4.png"), np.zeros((16, 21), np.uint16))
    (record,) = D.list_artextract(tmp_path, "val")
    with pytest.raises(D.BandShapeError, match="s_ms_4.png: band is 16x21"):
        D.load_scene(record)
    _artextract(tmp_path, "test", ["t"], size=(16, 20))
    _png(str(tmp_path / "test" / "rgb_images" / "t_RGB.png"), np.zeros((16, 22, 3), np.uint8))
    (record,) = D.list_artextract(tmp_path, "test")
    with pytest.raises(D.BandShapeError, match=r"t_ms_1.png: band is 16x20.*t_RGB.png"):
        D.load_scene(record)


# ------------------------------------------------------------------------------------------
# CAVE layout.


def _cave_scene(root, scene, nested, rng, n=31, size=(12, 14)):
    folder = os.path.join(root, f"{scene}_ms")
    if nested:
        folder = os.path.join(folder, f"{scene}_ms")
    bands = _rng_u16(rng, (*size, n))
    for b in range(n):
        _png(os.path.join(folder, f"{scene}_ms_{b + 1:02d}.png"), bands[..., b])
    rgb = _rng_u8(rng, (*size, 3))
    Image.fromarray(rgb).save(os.path.join(folder, f"{scene}_RGB.bmp"))
    return rgb, bands


def test_cave_nested_and_flat_folders(tmp_path):
    rng = np.random.default_rng(7)
    truth = {
        "balloons": _cave_scene(tmp_path, "balloons", True, rng),
        "beads": _cave_scene(tmp_path, "beads", False, rng),
    }
    records = D.list_cave(tmp_path)
    assert [r.name for r in records] == ["balloons", "beads"]
    assert records[0].band_indices == (1, 5, 10, 14, 18, 22, 27, 31)
    for r in records:
        rgb, bands = truth[r.name]
        scene = D.load_scene(r)
        np.testing.assert_array_equal(scene["rgb"], rgb * np.float32(1 / 255))
        np.testing.assert_array_equal(scene["bands"], bands[..., [0, 4, 9, 13, 17, 21, 26, 30]] * np.float32(1 / 65535))
    (r,) = [r for r in D.list_cave(tmp_path, bands=(31, 1)) if r.name == "beads"]
    np.testing.assert_array_equal(D.load_scene(r)["bands"], truth["beads"][1][..., [30, 0]] * np.float32(1 / 65535))


def test_cave_problems(tmp_path):
    rng = np.random.default_rng(8)
    _cave_scene(tmp_path, "a", True, rng)
    _cave_scene(tmp_path, "b", False, rng)
    os.remove(tmp_path / "a_ms" / "a_ms" / "a_RGB.bmp")
    os.remove(tmp_path / "b_ms" / "b_ms_10.png")
    with pytest.raises(readers.DataValidationError) as info:
        D.list_cave(tmp_path)
    message = str(info.value)
    assert len(info.value.problems) == 2
    assert "bands of 'a' without an RGB image" in message
    assert "'b' lacks band(s) [10]" in message and "b_ms_10.png" in message


def test_default_band_selection():
    assert D.default_band_selection(31) == (1, 5, 10, 14, 18, 22, 27, 31)
    assert D.default_band_selection(8) == tuple(range(1, 9))
    assert D.default_band_selection(5) == (1, 2, 3, 4, 5)
    assert D.default_band_selection(16, 4) == (1, 6, 11, 16)


# ------------------------------------------------------------------------------------------
# .mat cubes.


def _v73(path, variables):
    """A MATLAB v7.3 file: a 512-byte MAT header, then HDF5 holding the arrays column-major."""
    # Imported here: h5py is optional, and the tests that need it skip without it.
    import h5py  # noqa: PLC0415

    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in variables.items():
            f[name] = np.asarray(array).T  # MATLAB writes column-major: h5py sees the axes reversed
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" "))
        f.write(b"\x00" * 8 + b"\x00\x02IM")
    return str(path)


def test_mat_v5_default_variable_bands_and_synthesised_rgb(tmp_path):
    rng = np.random.default_rng(9)
    ref = rng.random((10, 12, 31))
    scipy.io.savemat(tmp_path / "img1.mat", {"ref": ref, "lbl": np.ones((10, 12)), "small": rng.random((2, 2, 3))})
    hidden = _rng_u16(rng, (10, 12))
    _png(str(tmp_path / "img1_hidden.png"), hidden)
    (record,) = D.list_mat(tmp_path)
    assert (record.cube_variable, record.cube_format) == ("ref", "v5")
    assert record.band_indices == (1, 5, 10, 14, 18, 22, 27, 31) and record.rgb_bands == (20, 13, 5)
    scene = D.load_scene(record)
    np.testing.assert_allclose(scene["bands"], ref[..., [0, 4, 9, 13, 17, 21, 26, 30]], rtol=1e-6)
    np.testing.assert_allclose(scene["rgb"], ref[..., [19, 12, 4]], rtol=1e-6)
    np.testing.assert_array_equal(scene["hidden"], hidden * np.float32(1 / 65535))
    (named,) = D.list_mat(tmp_path, variable="small", bands=(3, 1), rgb_bands=(1, 2, 3))
    with pytest.raises(D.BandShapeError, match="img1_hidden.png: hidden .* is 10x12 .* img1.mat .* 2x2"):
        D.load_scene(named)  # the truth beside the file is the size of 'ref', not of 'small'
    os.remove(tmp_path / "img1_hidden.png")
    (named,) = D.list_mat(tmp_path, variable="small", bands=(3, 1), rgb_bands=(1, 2, 3))
    np.testing.assert_allclose(
        D.load_scene(named)["bands"], scipy.io.loadmat(tmp_path / "img1.mat")["small"][..., [2, 0]]
    )


def test_mat_scaling_rgb_variable_and_problems(tmp_path):
    rng = np.random.default_rng(10)
    cube16 = _rng_u16(rng, (6, 7, 9))
    scipy.io.savemat(tmp_path / "u16.mat", {"cube": cube16, "rgb": _rng_u8(rng, (6, 7, 3))})
    radiance = rng.random((6, 7, 9)) * 400.0
    scipy.io.savemat(tmp_path / "radiance.mat", {"cube": radiance})
    (u16,) = D.list_mat(tmp_path / "u16.mat", rgb_variable="rgb")
    scene = D.load_scene(u16)
    # 8 evenly spaced of 9 bands: 1, 2, 3, 4, 6, 7, 8, 9
    np.testing.assert_array_equal(scene["bands"], cube16[..., [0, 1, 2, 3, 5, 6, 7, 8]] * np.float32(1 / 65535))
    np.testing.assert_array_equal(scene["rgb"], scipy.io.loadmat(tmp_path / "u16.mat")["rgb"] * np.float32(1 / 255))
    (rad,) = D.list_mat(tmp_path / "radiance.mat", bands=(9,))
    np.testing.assert_allclose(D.load_scene(rad)["bands"][..., 0], radiance[..., 8] / radiance.max(), rtol=1e-6)
    (tmp_path / "junk.mat").write_bytes(b"hello, not matlab" * 20)
    scipy.io.savemat(tmp_path / "flat.mat", {"image": rng.random((4, 4))})
    with pytest.raises(readers.DataValidationError) as info:
        D.list_mat(tmp_path, bands=(1, 12))
    message = str(info.value)
    assert len(info.value.problems) == 4, message
    assert "junk.mat: not a MATLAB .mat file" in message
    assert "flat.mat: no numeric 3-D array" in message and "image [4, 4]" in message
    assert "u16.mat: band index(es) [12] beyond the cube's 9 bands" in message
    with pytest.raises(readers.DataValidationError, match="no variable 'ref'.*cube"):
        D.list_mat(tmp_path / "u16.mat", variable="ref")


def test_mat_v73_through_h5py_and_without_it(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    rng = np.random.default_rng(11)
    ref = rng.random((9, 11, 31)).astype(np.float32)
    path = _v73(tmp_path / "img2.mat", {"ref": ref, "lbl": np.zeros((9, 11))})
    (record,) = D.list_mat(path)
    assert (record.cube_format, record.cube_variable) == ("v7.3", "ref")
    scene = D.load_scene(record)
    assert scene["bands"].shape == (9, 11, 8)
    np.testing.assert_array_equal(scene["bands"], ref[..., [0, 4, 9, 13, 17, 21, 26, 30]])
    np.testing.assert_array_equal(D.read_cube(path)[0], ref)
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(readers.UnsupportedImageError, match="img2.mat.*v7.3.*needs h5py"):
        D.read_cube(path)


# ------------------------------------------------------------------------------------------
# Augmentation and batches.


def _bands_of(rgb):
    return np.stack([rgb[..., 0] * (k + 1) + rgb[..., 1] ** 2 - k * rgb[..., 2] for k in range(5)], -1)


def _functional_scene(rng, h, w):
    """Bands and truth as per-pixel functions of the RGB: they stay so only if every array gets
    the same geometric transform."""
    rgb = rng.random((h, w, 3)).astype(np.float32)
    bands = _bands_of(rgb)
    hidden = rgb.mean(-1)
    return {"name": "f", "rgb": rgb, "bands": bands, "hidden": hidden, "hidden_mask": hidden > 0.5, "extra": 7}


def _dihedral(a):
    for flip in (False, True):
        x = a[:, ::-1] if flip else a
        for k in range(4):
            yield np.rot90(x, k, axes=(0, 1))


def test_augment_is_identical_for_rgb_bands_and_truth():
    rng = np.random.default_rng(12)
    scene = _functional_scene(rng, 24, 24)
    seen = set()
    for seed in range(40):
        out = D.augment(np.random.default_rng(seed), scene, crop=16)
        rgb = out["rgb"]
        assert rgb.shape == (16, 16, 3) and out["extra"] == 7
        np.testing.assert_allclose(out["bands"], _bands_of(rgb), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out["hidden"], rgb.mean(-1))
        np.testing.assert_array_equal(out["hidden_mask"], rgb.mean(-1) > 0.5)
        # The output is one of the 8 flips/rotations of one 16x16 window of the input.
        matches = [
            (y, x, i)
            for y in range(9)
            for x in range(9)
            for i, t in enumerate(_dihedral(scene["rgb"][y : y + 16, x : x + 16]))
            if np.array_equal(t, rgb)
        ]
        assert len(matches) == 1
        seen.add(matches[0][2])
    assert seen == set(range(8))  # every flip/rotation occurs
    again = D.augment(np.random.default_rng(3), scene, crop=16)
    np.testing.assert_array_equal(again["bands"], D.augment(np.random.default_rng(3), scene, crop=16)["bands"])


def test_augment_non_square_keeps_size_and_checks_crop():
    scene = _functional_scene(np.random.default_rng(13), 12, 20)
    for seed in range(20):
        out = D.augment(np.random.default_rng(seed), scene)
        assert out["rgb"].shape == (12, 20, 3) and out["bands"].shape == (12, 20, 5)
        assert any(np.array_equal(t, out["rgb"]) for t in _dihedral(scene["rgb"]))
    plain = D.augment(np.random.default_rng(0), scene, flips=False, rot90=False)
    np.testing.assert_array_equal(plain["bands"], scene["bands"])
    with pytest.raises(ValueError, match="crop .* does not fit"):
        D.augment(np.random.default_rng(0), scene, crop=(13, 5))


def test_to_batch():
    rng = np.random.default_rng(14)
    a, b = _functional_scene(rng, 8, 8), _functional_scene(rng, 8, 8)
    batch = D.to_batch([a, b])
    np.testing.assert_array_equal(batch["bands"][1], b["bands"])
    assert batch["hidden_mask"].dtype == bool and batch["rgb"].shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="crop or resize"):
        D.to_batch([a, _functional_scene(rng, 8, 9)])
