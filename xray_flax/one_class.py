"""The one-class protocol: train on one class, test on the whole test set, the other classes anomalous.

    python -m xray_flax.one_class --dataset digits --workdir /tmp/one_class
    python -m xray_flax.one_class --dataset mnist --data_dir ~/tensorflow_datasets --workdir DIR
    python -m xray_flax.one_class --dataset fashion_mnist --classes 0,1 --config.train.num_steps=2000 ...

The protocol of the one-class literature (docs/papers.md, "The pyramidal autoencoder", whose
evaluation it is): for each class c, a model is trained on the training images of c only and tested
on the whole test set, where the test images of c are normal and those of the nine other
classes anomalous; the result is the ROC-AUC per class and its mean over the classes.

Every class runs through the same code as every other experiment:
`xray_flax.workflow.train_and_evaluate(config, workdir)` on the Folder layout, so the data
pipeline, the loop, evaluation and the score normalisation are those of the X-ray runs. The
dataset is written once as PNG files,

    <workdir>/data/<dataset>/train/<class>/<index>.png     training images
    <workdir>/data/<dataset>/test/<class>/<index>.png      test images
    <workdir>/data/<dataset>/others/<c>/<class>/<index>.png  symlinks: the test images of every class but c

and class c trains with folder.normal_dir = train/c, folder.normal_test_dir = test/c and
folder.abnormal_dir = others/c, in <workdir>/runs/<dataset>/class_<c>. The table is written
to <workdir>/one_class_<dataset>.md and .json.

Datasets and sizes:
* digits: scikit-learn's `load_digits` (1797 images of 8x8 pixels, values 0..16, bundled with
  scikit-learn, offline). It has no official train/test split: per class, a fixed random third
  (seed 0) is the test set. The images are upscaled x4 to 32x32 by bilinear interpolation
  (PIL, half-pixel centres) from values scaled to 0..255, and stored as 8-bit PNG.
* mnist, fashion_mnist: TensorFlow Datasets' train and test splits (60000 / 10000 images,
  28x28), read with download=False from --data_dir (or TFDS's default folder) and stored as
  they are; the pipeline's border='pad' pads each to one 32x32 tile with zeros on the right
  and bottom. Preparing them needs internet once: `tfds build mnist --data_dir DIR` (same for
  fashion_mnist) on a machine that has it, then copy DIR and pass --data_dir DIR. TFDS reads
  these prepared files through TensorFlow, which the default install leaves out (1.3 GB):
  `pip install -e ".[tensorflow]"` adds it; without it these datasets stop with one line
  saying so (digits needs nothing).

Two departures from the protocol, both forced by the shared pipeline and both small:
* Validation. The loop validates on a val split and fits the score normalisation on its
  normal tiles, so val holds a random tenth of class c's training images (9/10 train). The
  Folder layout also sends a val:test share of abnormal_dir to val, and gives a split with a
  positive fraction at least one image; the split fractions here make that share ~0, so
  exactly one other-class test image per class sits in val instead of test (the JSON gives
  the test counts). Validation runs once, after the last step, so no checkpoint is selected
  with the help of that anomaly; the final model is the one evaluated.
* The image score is the mean of the anomaly map over the image (`model.image_score='mean'`,
  the pyramidal autoencoder's per-image reconstruction error, as its authors' related code
  scores images by their loss); a detector without that option keeps its own score.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image
from sklearn.datasets import load_digits

from xray_flax import errors, files, logs, parallel, workflow
from xray_flax.config_base import get_base_config

log = logging.getLogger(__name__)

DATASETS = ("digits", "mnist", "fashion_mnist")
TFDS_DATASETS = ("mnist", "fashion_mnist")
CLASS_NAMES = {
    "digits": tuple(str(i) for i in range(10)),
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
DIGITS_SCALE = 4  # 8x8 -> 32x32
DIGITS_TEST_FRACTION = 1.0 / 3.0
# train:val of class c's training images; the third number makes the abnormal val:test share ~0
# (the Folder layout still sends the one image a positive fraction guarantees; module docstring).
SPLIT_FRACTIONS = (0.9, 0.1, 1e6)


class DatasetNotPreparedError(errors.UserError, FileNotFoundError):
    """A TFDS dataset is not on this machine (the protocol never downloads)."""


class TensorFlowNeededError(errors.UserError):
    """A TFDS dataset of the protocol needs TensorFlow, an optional extra (`.[tensorflow]`)."""


def tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


# ------------------------------------------------------------------------------------------
# Datasets as arrays.


@dataclasses.dataclass(frozen=True)
class ClassificationData:
    """uint8 images [n, H, W] and int labels [n] of a train and a test split."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    description: str

    @property
    def classes(self) -> list[int]:
        return sorted(int(c) for c in np.unique(np.concatenate([self.train_labels, self.test_labels])))


def _per_class_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices keeping at most `limit` examples of each class (all when limit <= 0), a fixed
    random choice, in their original order."""
    if limit <= 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(np.sort(rng.permutation(idx)[:limit]) if len(idx) > limit else idx)
    return np.sort(np.concatenate(keep))


def upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """float images [n, h, w] in [0, 1] -> uint8 [n, h*factor, w*factor], PIL bilinear."""
    out = []
    for image in images:
        h, w = image.shape
        big = Image.fromarray(image.astype(np.float32)).resize((w * factor, h * factor), Image.BILINEAR)
        out.append(np.clip(np.rint(np.asarray(big) * 255.0), 0, 255).astype(np.uint8))
    return np.stack(out)


def load_digits_data(seed: int = 0) -> ClassificationData:
    """scikit-learn's digits, a stratified fixed third per class as the test set, upscaled to 32x32."""
    digits = load_digits()
    images = upscale(digits.images / 16.0, DIGITS_SCALE)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: int(round(len(idx) * DIGITS_TEST_FRACTION))]] = True
    return ClassificationData(
        "digits",
        images[~test],
        labels[~test],
        images[test],
        labels[test],
        f"scikit-learn load_digits, 8x8 upscaled x{DIGITS_SCALE} (PIL bilinear) to 32x32; per class a fixed "
        f"random {DIGITS_TEST_FRACTION:.3f} (seed {seed}) is the test set",
    )


def _not_prepared_message(name: str, data_dir: str) -> str:
    where = data_dir or "TFDS's default folder (~/tensorflow_datasets, or $TFDS_DATA_DIR)"
    return (
        f"the TFDS dataset {name!r} is not prepared in {where}, and the one-class protocol does not download. "
        f"On a machine with internet run `tfds build {name} --data_dir DIR` (or in Python: "
        f"tfds.builder({name!r}, data_dir=DIR).download_and_prepare()), copy DIR here and pass --data_dir DIR."
    )


def _tfds_split(name: str, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    if not tensorflow_installed():
        raise TensorFlowNeededError(
            f"--dataset {name} is read from TFDS's prepared files through TensorFlow, which the default install "
            f'leaves out: install it with `pip install -e ".[tensorflow]"` (or `pip install tensorflow-cpu`), '
            f"or run --dataset digits"
        )
    # Imported here: TFDS takes ~0.4 s to import and then loads TensorFlow; only these data need them.
    import tensorflow_datasets as tfds  # noqa: PLC0415

    try:
        ds = tfds.load(name, split=split, data_dir=data_dir or None, download=False, shuffle_files=False)
    except AssertionError as e:
        # TFDS reports missing data with an AssertionError ("could not find data in ...").
        raise DatasetNotPreparedError(_not_prepared_message(name, data_dir)) from e
    images, labels = [], []
    for example in tfds.as_numpy(ds):
        image = np.asarray(example["image"])
        images.append(image[..., 0] if image.ndim == 3 else image)
        labels.append(int(example["label"]))
    if not images:
        raise DatasetNotPreparedError(
            f"the TFDS dataset {name!r} split {split!r} is empty. " + _not_prepared_message(name, data_dir)
        )
    return np.stack(images).astype(np.uint8), np.asarray(labels, np.int64)


def load_tfds_data(name: str, data_dir: str = "") -> ClassificationData:
    """MNIST or Fashion-MNIST from a prepared TFDS folder (never downloads)."""
    if name not in TFDS_DATASETS:
        raise ValueError(f"{name!r} is not a TFDS dataset of the protocol; expected one of {TFDS_DATASETS}")
    train_images, train_labels = _tfds_split(name, "train", data_dir)
    test_images, test_labels = _tfds_split(name, "test", data_dir)
    return ClassificationData(
        name,
        train_images,
        train_labels,
        test_images,
        test_labels,
        f"TFDS {name} train/test splits, {train_images.shape[1]}x{train_images.shape[2]} as stored, padded to the "
        f"patch size by the pipeline's border policy",
    )


def load_data(name: str, data_dir: str = "") -> ClassificationData:
    if name == "digits":
        return load_digits_data()
    if name in TFDS_DATASETS:
        return load_tfds_data(name, data_dir)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def subset(data: ClassificationData, max_train_per_class: int = 0, max_test_per_class: int = 0) -> ClassificationData:
    """At most this many images per class in each split (0 = all): quick runs and tests."""
    train = _per_class_subset(data.train_labels, max_train_per_class, seed=1)
    test = _per_class_subset(data.test_labels, max_test_per_class, seed=2)
    description = data.description
    if max_train_per_class > 0 or max_test_per_class > 0:
        description += (
            f"; subset of at most {max_train_per_class or 'all'} train / {max_test_per_class or 'all'} test per class"
        )
    return dataclasses.replace(
        data,
        train_images=data.train_images[train],
        train_labels=data.train_labels[train],
        test_images=data.test_images[test],
        test_labels=data.test_labels[test],
        description=description,
    )


# ------------------------------------------------------------------------------------------
# PNG folders.


def _fingerprint(data: ClassificationData) -> dict:
    return {
        "dataset": data.name,
        "description": data.description,
        "train": np.bincount(data.train_labels, minlength=10).tolist(),
        "test": np.bincount(data.test_labels, minlength=10).tolist(),
        "shape": list(data.train_images.shape[1:]),
        "checksum": int(data.train_images.astype(np.int64).sum() + 7 * data.test_images.astype(np.int64).sum()),
    }


def write_folders(data: ClassificationData, root: str) -> str:
    """Writes the dataset as PNG folders under `root`/<dataset> once (again only when it differs)."""
    base = os.path.join(root, data.name)
    marker = os.path.join(base, "dataset.json")
    fingerprint = _fingerprint(data)
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == fingerprint:
                return base
        log.warning("%s holds other data (subset or source changed): writing it again", base)
    shutil.rmtree(base, ignore_errors=True)
    for split, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("test", data.test_images, data.test_labels),
    ):
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = os.path.join(base, split, str(int(label)))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(os.path.join(folder, f"{i:05d}.png"))
    test_dir = os.path.join(base, "test")
    for c in data.classes:
        for other in data.classes:
            if other == c:
                continue
            source = os.path.join(test_dir, str(other))
            if not os.path.isdir(source):
                continue
            target = os.path.join(base, "others", str(c), str(other))
            os.makedirs(target, exist_ok=True)
            # One symlink per file: the Folder layout walks folders without following linked ones.
            for name in sorted(os.listdir(source)):
                os.symlink(os.path.relpath(os.path.join(source, name), target), os.path.join(target, name))
    files.write_text_atomic(marker, json.dumps(fingerprint, indent=1))
    log.info("wrote %s as PNG folders to %s", data.name, base)
    return base


# ------------------------------------------------------------------------------------------
# The protocol.


def default_config(detector: str = "pyramid_ae") -> ml_collections.ConfigDict:
    """The full config of one class's run; the data.folder dirs are filled in per class.

    Sized for the 10 classes of digits in well under 30 minutes on 2 CPU cores (docs/results.md):
    widths 8..32, 300 steps of 32 images (about 80 epochs of a digit class's ~110 training images).
    """
    config = get_base_config(detector)
    config.method = f"{detector}, one-class protocol"
    data = config.data
    data.source = "folder"
    data.root = ""
    data.channels = 1
    data.patch_size = 32
    data.stride = 32
    data.border = "pad"  # 28x28 MNIST -> one 32x32 tile, zeros right and bottom
    data.background.rule = "none"  # digits are mostly black: every image is one tile that counts
    data.normalization = "bit_depth"
    data.split_fractions = SPLIT_FRACTIONS
    data.read_threads = 2
    config.train.num_steps = 300
    config.train.batch_size = 32
    config.train.log_every = 100
    config.train.image_summary_every = 0
    config.train.eval_every = config.train.num_steps
    config.train.checkpoint_every = config.train.num_steps
    config.train.keep_checkpoints = 1
    config.train.predict_test_scans = 0
    config.eval.batch_size = 128
    config.eval.timing_batches = 2
    config.eval.timing_warmup_batches = 1
    if detector == "pyramid_ae":
        config.model.widths = (8, 16, 32)  # 32 px -> last map 8x8x32
        config.model.pyramid_bins = (1, 2, 4)
        config.model.pyramid_reductions = (1, 2, 4)
        config.model.latent_channels = 8  # bottleneck 8x8x8 = 512 numbers for 1024 pixels
        config.model.image_score = "mean"
    return config


def class_config(config: ml_collections.ConfigDict, base: str, c: int) -> ml_collections.ConfigDict:
    """`config` with the Folder dirs of class c (a copy; `config` is unchanged)."""
    config = config.copy_and_resolve_references()
    config.data.folder.normal_dir = os.path.join(base, "train", str(c))
    config.data.folder.normal_test_dir = os.path.join(base, "test", str(c))
    config.data.folder.abnormal_dir = os.path.join(base, "others", str(c))
    config.data.folder.mask_dir = ""
    # One validation, after the last step: no checkpoint is picked with an anomaly's help.
    config.train.eval_every = config.train.num_steps
    return config


def run_class(config: ml_collections.ConfigDict, base: str, c: int, workdir: str) -> dict:
    """Train and evaluate class c with the shared loop; its row of the table."""
    config = class_config(config, base, c)
    result_path = os.path.join(workdir, "one_class_result.json")
    config_json = json.loads(config.to_json_best_effort())
    if os.path.isfile(result_path):
        with open(result_path) as f:
            stored = json.load(f)
        if stored.get("config") == config_json:
            log.info("class %d: reusing the finished run in %s", c, workdir)
            return stored["row"]
    start = time.perf_counter()
    report = workflow.train_and_evaluate(config, workdir)
    if report is None:
        raise RuntimeError(f"class {c}: training stopped early (halt_after_steps or a termination request)")
    with open(os.path.join(workdir, "splits.json")) as f:
        splits = json.load(f)
    val_labels = [r.get("image_label") for r in splits["val"]]
    test_labels = [r.get("image_label") for r in splits["test"]]
    auroc = report["test"]["roc_auc"]
    row = {
        "class": int(c),
        "auroc": None if auroc is None else float(auroc),
        "n_train": len(splits["train"]),
        "n_val_normal": sum(label == 0 for label in val_labels),
        "n_val_anomalous": sum(label == 1 for label in val_labels),
        "n_test_normal": sum(label == 0 for label in test_labels),
        "n_test_anomalous": sum(label == 1 for label in test_labels),
        "seconds": round(time.perf_counter() - start, 1),
    }
    files.write_text_atomic(result_path, json.dumps({"config": config_json, "row": row}, indent=1))
    return row


def summarize(rows: Sequence[dict]) -> dict:
    values = [r["auroc"] for r in rows if r["auroc"] is not None]
    return {"mean_auroc": float(np.mean(values)) if values else None, "classes": len(rows)}


def markdown_table(dataset: str, rows: Sequence[dict], summary: dict) -> str:
    names = CLASS_NAMES.get(dataset, ())

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        "| class | name | AUROC | train | val normal | test normal | test anomalous |",
        "|---:|:---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = names[r["class"]] if r["class"] < len(names) else str(r["class"])
        lines.append(
            f"| {r['class']} | {name} | {fmt(r['auroc'])} | {r['n_train']} | {r['n_val_normal']} | "
            f"{r['n_test_normal']} | {r['n_test_anomalous']} |"
        )
    lines.append(f"| **mean** | | **{fmt(summary['mean_auroc'])}** | | | | |")
    return "\n".join(lines) + "\n"


def run_protocol(
    dataset: str,
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    classes: Sequence[int] | None = None,
    data_dir: str = "",
    max_train_per_class: int = 0,
    max_test_per_class: int = 0,
    data: ClassificationData | None = None,
) -> dict:
    """The whole protocol on `dataset`: per-class rows, the mean, the markdown table; writes
    <workdir>/one_class_<dataset>.{json,md}. `data` replaces loading (tests)."""
    config = config or default_config()
    data = data or load_data(dataset, data_dir)
    data = subset(data, max_train_per_class, max_test_per_class)
    base = write_folders(data, os.path.join(workdir, "data"))
    chosen = list(classes) if classes else data.classes
    unknown = sorted(set(chosen) - set(data.classes))
    if unknown:
        raise ValueError(f"classes {unknown} are not in {dataset} (classes {data.classes})")
    start = time.perf_counter()
    rows = []
    for c in chosen:
        log.info("one-class %s: class %d (%d of %d)", dataset, c, len(rows) + 1, len(chosen))
        rows.append(run_class(config, base, c, os.path.join(workdir, "runs", dataset, f"class_{c}")))
        log.info("one-class %s: class %d ROC-AUC %s", dataset, c, rows[-1]["auroc"])
    summary = summarize(rows)
    result = {
        "dataset": dataset,
        "data": data.description,
        "detector": config.detector,
        "method": config.method,
        "protocol": "train on one class; test on the test set, the other classes anomalous; test ROC-AUC per class",
        "rows": rows,
        **summary,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "table": markdown_table(dataset, rows, summary),
    }
    os.makedirs(workdir, exist_ok=True)
    files.write_text_atomic(os.path.join(workdir, f"one_class_{dataset}.json"), json.dumps(result, indent=1))
    files.write_text_atomic(os.path.join(workdir, f"one_class_{dataset}.md"), result["table"])
    return result


# ------------------------------------------------------------------------------------------
# Command line.


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    flag_values = flags.FLAGS
    logs.configure(flag_values.verbose)
    parallel.enable_compilation_cache()  # classes share shapes: later ones hit the cache
    classes = [int(c) for c in flag_values.classes] if flag_values.classes else None
    try:
        result = run_protocol(
            flag_values.dataset,
            flag_values.workdir,
            flag_values.config,
            classes=classes,
            data_dir=flag_values.data_dir,
            max_train_per_class=flag_values.max_train_per_class,
            max_test_per_class=flag_values.max_test_per_class,
        )
    except (DatasetNotPreparedError, TensorFlowNeededError) as e:
        # Not a usage error: absl would print the whole flag help above the one line that matters.
        raise SystemExit(f"error: {e}") from e
    print(result["table"])
    print(f"wall time {result['wall_seconds']:.0f} s; {flag_values.workdir}/one_class_{flag_values.dataset}.json")


def _define_flags():
    flags.DEFINE_enum("dataset", "digits", list(DATASETS), "Dataset of the protocol.")
    flags.DEFINE_string("workdir", None, "Folder for the PNG data, the per-class runs and the table.", required=True)
    flags.DEFINE_list("classes", [], "Classes to run (default: all).")
    flags.DEFINE_string("data_dir", "", "TFDS data folder of a prepared mnist / fashion_mnist ('' = TFDS's default).")
    flags.DEFINE_integer("max_train_per_class", 0, "At most this many training images per class (0 = all).")
    flags.DEFINE_integer("max_test_per_class", 0, "At most this many test images per class (0 = all).")
    flags.DEFINE_bool("verbose", False, "Also show the INFO logs of orbax, grain and absl.")
    config_flags.DEFINE_config_dict("config", default_config(), "Run config; override fields with --config.a.b=v.")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
