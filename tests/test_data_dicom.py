"""DICOM radiographs through pydicom: MONOCHROME2 and MONOCHROME1, rescale slope/intercept,
BitsStored, signed data, files found by their preamble, and compressed transfer syntaxes
without a decoder refused with what to install. Files are written with pydicom itself;
expected values are computed with NumPy from the written arrays."""

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, RLELossless, generate_uid

from xray_flax.data import config as data_config_lib
from xray_flax.data import readers, validate
from xray_flax.data.layouts import ScanRecord, Splits


def write_dicom(
    path,
    pixels,
    *,
    bits_stored=12,
    photometric="MONOCHROME2",
    slope=None,
    intercept=None,
    transfer_syntax=ExplicitVRLittleEndian,
    preamble=True,
):
    """A digital-radiography (DX) image file; `pixels` uint16/int16 [H, W] or uint8 [H, W, 3]."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    # A compressed syntax holds encapsulated fragments (here not really compressed: the
    # decoder check must refuse the file from its header).
    ds.PixelData = encapsulate([pixels.tobytes()]) if transfer_syntax.is_compressed else pixels.tobytes()
    ds.save_as(path, enforce_file_format=preamble)
    return str(path)


def _radiograph(h=60, w=50, top=4095, seed=0):
    raw = np.random.default_rng(seed).integers(0, top + 1, (h, w), dtype=np.uint16)
    raw[0, 0], raw[-1, -1] = 0, top
    return raw


def _read_all(path, **kw):
    r = readers.open_scan(path, **kw)
    return r, r.read_region(0, 0, r.height, r.width)


def _unit(values, top):
    return (values.astype(np.float32) * np.float32(1.0 / top))[..., None]


def test_monochrome2_12_bit(tmp_path):
    raw = _radiograph()
    path = write_dicom(tmp_path / "a.dcm", raw)
    r, values = _read_all(path)
    assert (r.height, r.width, r.channels, r.bit_depth, r.container_bits) == (60, 50, 1, 12, 16)
    assert "DICOM BitsStored 12" in r.scale_decision.reason
    np.testing.assert_array_equal(values, _unit(raw, 4095))
    assert readers.read_header(path) == readers.ImageHeader(path, 60, 50, 1, 12)


@pytest.mark.parametrize("slope, intercept", [(1.0, 0.0), (2.5, -1024.0), (-1.0, 4095.0)])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_rescale_and_monochrome1(tmp_path, photometric, slope, intercept):
    raw = _radiograph(top=16383, seed=1)
    path = write_dicom(
        tmp_path / "r.dcm", raw, bits_stored=14, photometric=photometric, slope=slope, intercept=intercept
    )
    _, values = _read_all(path)
    # The reference: modality values m = slope * v + intercept, the stored range 0..16383
    # mapped through the rescale onto [0, 1], then MONOCHROME1 reversed (high = bright).
    m = slope * raw.astype(np.float64) + intercept
    ends = slope * np.array([0.0, 16383.0]) + intercept
    unit = (m - ends.min()) / (ends.max() - ends.min())
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    np.testing.assert_allclose(values[..., 0], unit, atol=1e-6)


def test_signed_pixels_and_8_bit_words(tmp_path):
    signed = (_radiograph(seed=2).astype(np.int32) - 2048).astype(np.int16)  # -2048..2047
    _, values = _read_all(write_dicom(tmp_path / "s.dcm", signed))
    np.testing.assert_array_equal(values, _unit(signed.astype(np.int64) + 2048, 4095))
    rgb = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    r, values = _read_all(write_dicom(tmp_path / "c.dcm", rgb, bits_stored=8, photometric="RGB"), channels=3)
    assert r.bit_depth == 8
    np.testing.assert_array_equal(values, rgb.astype(np.float32) * np.float32(1 / 255))


def test_a_file_with_the_preamble_is_dicom_whatever_its_name(tmp_path):
    raw = _radiograph(seed=4)
    path = write_dicom(tmp_path / "IM000001", raw)  # DICOMDIR exports carry no suffix
    assert readers.is_dicom(path) and not readers.is_dicom(tmp_path / "nothing.png")
    _, values = _read_all(path)
    np.testing.assert_array_equal(values, _unit(raw, 4095))
    # A .dcm file without the 128-byte preamble is read too (by its suffix).
    bare = write_dicom(tmp_path / "bare.dcm", raw, preamble=False)
    _, values = _read_all(bare)
    np.testing.assert_array_equal(values, _unit(raw, 4095))


def test_rle_compressed_dicom_is_decoded(tmp_path):
    raw = _radiograph(seed=5)
    path = write_dicom(tmp_path / "rle.dcm", raw)
    ds = dcmread(path)
    ds.compress(RLELossless)  # pydicom's own encoder and decoder: no plugin needed
    ds.save_as(path)
    assert dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    _, values = _read_all(path)
    np.testing.assert_array_equal(values, _unit(raw, 4095))


def test_compressed_without_a_decoder_names_the_file_and_what_to_install(tmp_path):
    # Not real JPEG data: the decoder check comes first, from the header alone.
    path = write_dicom(tmp_path / "j.dcm", _radiograph(), transfer_syntax=JPEGLosslessSV1)
    for fn in (readers.open_scan, readers.read_header):
        with pytest.raises(readers.UnsupportedImageError) as info:
            fn(path)
        message = str(info.value)
        assert path in message and "JPEG Lossless" in message and "pylibjpeg" in message


@pytest.mark.filterwarnings("ignore:Expected implicit VR")  # pydicom, parsing the text file
def test_bad_dicom_files(tmp_path):
    (tmp_path / "text.dcm").write_text("not DICOM at all")
    with pytest.raises(readers.UnreadableImageError, match="text.dcm"):
        readers.open_scan(tmp_path / "text.dcm")
    frames = np.zeros((2, 8, 8), np.uint16)
    path = write_dicom(tmp_path / "multi.dcm", frames[0])
    ds = dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    ds.save_as(path)
    with pytest.raises(readers.UnsupportedImageError, match="multi-frame"):
        readers.read_header(path)


def test_validation_reads_dicom_headers(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", _radiograph(64, 64))
    c = data_config_lib.defaults()
    c.source, c.patch_size, c.stride = "scans", 32, 32
    report = validate.validate_splits(Splits([ScanRecord(good)], [], []), c)
    assert report.images == 1
