"""A lab's own scans through the README's own-scans command: a nested folder of 16-bit LZW
TIFFs, 12-bit data in 16-bit TIFFs (no tag saying so), a float32 TIFF and a DICOM, with pixel
masks beside some scans; `configs/scans.py` (PaDiM on EfficientNet-Lite0) fits, evaluates and
predicts with the default normalisation, and the anomalies it was given score above the clean
tiles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xray_flax.data import simulate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
SIDE = 384  # 9 tiles of 128 px a scan


def _radiographs(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(float [0, 1] image, bool mask) of `n` simulated scans of SIDE x SIDE."""
    params = simulate.SimulationParams(n_scans=n, height=SIDE, width=SIDE, seed=7, margin=0.0)
    scans = [simulate.simulate_scan(params, i) for i in range(n)]
    return [(image.astype(np.float64) / 65535.0, mask) for image, mask in scans]


def _write_dicom(path: str, values: np.ndarray, bits_stored: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "DX", "painting"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = values.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).BitsStored == bits_stored


def build_lab_folder(root: str) -> dict[str, bool]:
    """A lab's folder as scanners write it; {scan path: whether it has a mask}."""
    scans = _radiographs(7)
    layout = [
        ("panel_a/scan_01.tif", "lzw16"),
        ("panel_a/scan_02.tif", "lzw16"),
        ("panel_a/details/scan_03.tif", "lzw16"),
        ("panel_b/scan_04.tif", "12in16"),
        ("panel_b/scan_05.tif", "12in16"),
        ("panel_b/infrared/scan_06.tif", "float32"),
        ("dr/scan_07.dcm", "dicom12"),
    ]
    written = {}
    for (name, kind), (image, mask) in zip(layout, scans):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if kind == "lzw16":
            tifffile.imwrite(path, np.round(image * 65535).astype(np.uint16), compression="lzw")
        elif kind == "12in16":  # a 12-bit detector's values in a 16-bit file, no tag saying so
            tifffile.imwrite(path, np.round(image * 4095).astype(np.uint16), compression="lzw")
        elif kind == "float32":  # a float radiograph in its own units (min-max scaled on reading)
            tifffile.imwrite(path, (100.0 + 900.0 * image).astype(np.float32))
        else:
            _write_dicom(path, np.round(image * 4095), bits_stored=12)
        has_mask = bool(mask.any()) and kind != "dicom12"
        if has_mask:
            stem = os.path.splitext(path)[0]
            Image.fromarray((mask * 255).astype(np.uint8)).save(f"{stem}_mask.png")
        written[path] = has_mask
    return written


def readme_own_scans_command() -> list[str]:
    """The command of README.md's "Your own scans" section, as its argument list."""
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Your own scans") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    line = next(ln for ln in block.replace("\\\n", " ").splitlines() if "--config configs/scans.py " in ln)
    args = line.split("#")[0].split()
    assert args[:3] == ["python", "-m", "xray_flax.main"], line
    return args[3:]


@pytest.mark.slow  # ~1-2 min on 2 cores: Lite0 features of 63 tiles of 128 px, evaluation, two scans predicted
def test_the_readme_own_scans_command_fits_evaluates_and_predicts_a_lab_folder(tmp_path):
    root = str(tmp_path / "xrays")
    written = build_lab_folder(root)
    workdir = str(tmp_path / "my_scans")
    args = [a.replace("/path/to/scans", root).replace("workdirs/my_scans", workdir) for a in readme_own_scans_command()]
    assert f"--config.data.root={root}" in args and workdir in args
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-m", "xray_flax.main", *args, "--config.train.predict_test_scans=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # Every scan of every kind and folder was found and read at its own scale.
    splits = json.load(open(os.path.join(workdir, "splits.json")))
    found = sorted(p for split in splits.values() if isinstance(split, list) for p in _paths(split))
    assert found == sorted(written), found
    assert "bit depth 12" in result.stderr  # the 12-bit files and the DICOM, decided and logged
    report = json.load(open(os.path.join(workdir, "metrics.json")))
    assert report["detector"] == "padim"
    auc = report["test"]["roc_auc"]
    assert auc is None or auc > 0.6, report["test"]
    predictions = os.path.join(workdir, "predictions")
    reports = [d for d in os.listdir(predictions) if os.path.isfile(os.path.join(predictions, d, "report.html"))]
    assert len(reports) == min(2, len(splits["test"])) >= 1


def _paths(records) -> list[str]:
    return [r if isinstance(r, str) else r.get("path", "") for r in records]
