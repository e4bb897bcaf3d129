"""Hidden-art runs through the shared CLI: train (gradient methods), checkpoint, evaluate, report.

    python -m xray_flax.main --config configs/hidden_<method>.py --workdir DIR [--mode evaluate]

`train_and_evaluate` loads the training and validation paintings (the simulated multispectral
paintings of `xray_flax.hidden_art.simulate` by default, or the ArtExtract / CAVE / .mat
layouts of `config.data.root`), trains a gradient method for `config.train.num_steps` steps
(random paintings, the same random crop and flips for the RGB and its bands), saving
`DIR/checkpoints/` every `config.train.checkpoint_every` steps and at the end (a rerun resumes
from the newest sound one; every save carries SHA-256 digests that restore checks), then
`evaluate`s: per validation painting the dissimilarity map and per-band maps, the collage of
the bands, the recovery metrics against the true hidden layer when the data have one
(correlation, SSIM, AUROC of the hidden mask: `xray_flax.hidden_art.metrics`), written to
`DIR/hidden_art/results.json`, per painting a 16-bit map PNG, the overlay of the map on the grey
RGB, the band collage (the 1-based band that differs most, 0 below the threshold) and every
output array (`<painting>_<method>_outputs.npz`), and the self-contained `gallery.html` (further
per-band maps of a method, e.g. GAT's attention, as their own columns); the training losses also
go to TensorBoard (DIR). Nothing here depends on which method runs (`xray_flax.hidden_art.methods`).
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from clu import metric_writers
from PIL import Image

from xray_flax import files, integrity
from xray_flax.checkpoint import CheckpointError, CorruptCheckpointError, first_line
from xray_flax.detectors.base import TrainState
from xray_flax.hidden_art import data, gallery, methods, simulate
from xray_flax.hidden_art import dissimilarity as dis
from xray_flax.hidden_art import metrics as recovery

log = logging.getLogger(__name__)

OUTPUT_DIR = "hidden_art"


# ----------------------------------------------------------------------------- data


def dataset_root(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(layout, root) of the configured data; simulated data are generated on first use."""
    d = config.data
    if d.source == "simulated":
        params = simulate.SimulationParams.from_config(d.simulation)
        return "artextract", simulate.ensure_simulated(params, d.cache_dir)
    if d.source != "files":
        raise ValueError(f"config.data.source={d.source!r}; expected 'simulated' or 'files'")
    if not d.root:
        raise ValueError("config.data.source='files' needs config.data.root (a folder of the configured layout)")
    return d.layout, d.root


def load_split(config: ml_collections.ConfigDict, split: str) -> list[dict]:
    layout, root = dataset_root(config)
    bands = tuple(int(b) for b in config.data.bands) or None
    records = data.list_scenes(layout, root, split=split, bands=bands)
    if not records:
        raise data.readers.DataError(f"no paintings in split {split!r} of {root} ({layout} layout)")
    return [data.load_scene(r) for r in records]


# ----------------------------------------------------------------------------- checkpoints


def _manager(workdir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)


def _tree(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "collections": state.collections, "opt_state": state.opt_state}


def save(manager: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
    tree = _tree(state)
    step = int(jax.device_get(state.step))
    nbytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))
    files.require_free_space(str(manager.directory), nbytes, f"checkpoint step {step}")
    meta = {**meta, "digest": integrity.digests(state=tree)}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, template: TrainState) -> TrainState | None:
    """The newest checkpoint, checked against its digests; None when there is none."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _tree(template))
    where = f"{manager.directory}/{step}"
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
    except Exception as e:  # orbax/tensorstore raise many types for unreadable files
        raise CorruptCheckpointError(f"cannot restore {where}: {first_line(e)}") from e
    problem = integrity.verify(where, dict(restored["meta"]), state=restored["state"])
    if problem is not None:
        raise CorruptCheckpointError(f"{problem}; move {where} away to start over")
    tree = restored["state"]
    return template.replace(
        step=tree["step"], params=tree["params"], collections=tree["collections"], opt_state=tree["opt_state"]
    )


# ----------------------------------------------------------------------------- training


def _sample(config, train_items: list, train_scenes: list[dict], method: methods.Method, step: int) -> list:
    """The items of one step's paintings, drawn (and augmented) from a key of (seed, step)."""
    rng = np.random.default_rng([int(config.seed), step])
    n = int(config.train.batch_size)
    picks = rng.choice(len(train_scenes), n, replace=len(train_scenes) < n)
    if not method.augment:
        return [train_items[i] for i in picks]
    crop = int(config.train.crop) or None
    return [method.item(data.augment(rng, train_scenes[i], crop=crop)) for i in picks]


def train(config: ml_collections.ConfigDict, workdir: str, method: methods.Method, train_scenes: list[dict]):
    """Variables of a trained (or training-free) method; resumes from DIR/checkpoints."""
    items = [method.item(s) for s in train_scenes] if not method.augment else []
    sizes = method.sizes(items, int(config.train.batch_size)) if items else None
    first = method.collate(_sample(config, items, train_scenes, method, 0), sizes)
    variables = method.init(jax.random.key(int(config.seed)), first)
    if not method.trained:
        return variables
    state = TrainState.create(variables, method.optimizer)
    manager = _manager(workdir)
    restored = restore(manager, state)
    if restored is not None:
        state = restored
        log.info("resumed from %s/%d", manager.directory, int(state.step))
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    step_fn = jax.jit(method.train_step)
    num_steps, every = int(config.train.num_steps), int(config.train.log_every)
    meta = {"method": method.name}
    start = time.perf_counter()
    for step in range(int(jax.device_get(state.step)), num_steps):
        batch = method.collate(_sample(config, items, train_scenes, method, step), sizes)
        key = jax.random.fold_in(jax.random.key(int(config.seed)), step)
        state, scalars = step_fn(state, batch, key)
        done = step + 1
        if done % every == 0 or done == num_steps:
            values = {k: float(v) for k, v in jax.device_get(scalars).items() if np.ndim(v) == 0}
            if not np.isfinite(values.get("loss", 0.0)):
                raise FloatingPointError(f"{method.name}: the loss is not finite at step {done}: {values}")
            elapsed = time.perf_counter() - start
            writer.write_scalars(done, values)
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
            print(f"[{method.name}] step {done}/{num_steps} {shown} ({elapsed:.0f} s)", flush=True)
        if done % int(config.train.checkpoint_every) == 0 or done == num_steps:
            save(manager, state, meta)
    writer.flush()
    return state.variables


def trained_variables(config, workdir: str, method: methods.Method, sample: dict) -> dict:
    """The variables of a finished run from DIR/checkpoints (evaluate: no training, no training
    data read); `sample` is any painting, giving the shapes for init."""
    variables = method.init(jax.random.key(int(config.seed)), method.collate([method.item(sample)], None))
    if not method.trained:
        return variables
    manager = _manager(workdir)
    state = restore(manager, TrainState.create(variables, method.optimizer))
    if state is None:
        raise CheckpointError(f"no checkpoint in {manager.directory}: train first (--mode train with --config)")
    return state.variables


# ----------------------------------------------------------------------------- evaluation


def _png16(path: str, values: np.ndarray) -> None:
    """A map scaled min-max to 16 bits (the PNG says where it is high, not its scale)."""
    v = np.asarray(values, np.float64)
    low, high = float(v.min()), float(v.max())
    scaled = np.zeros_like(v) if high <= low else (v - low) / (high - low)
    with files.atomic_output(path) as tmp:
        Image.fromarray(np.round(scaled * 65535).astype(np.uint16)).save(tmp, format="PNG")


def _png8(path: str, values: np.ndarray) -> None:
    with files.atomic_output(path) as tmp:
        Image.fromarray(np.asarray(values, np.uint8)).save(tmp, format="PNG")


def _extra_maps(name: str, outputs: dict) -> dict:
    """Further per-band maps a method returns besides its dissimilarity (e.g. the attention each
    superpixel receives, GAT), as their own gallery columns: per band and their mean over bands."""
    per_band = outputs["per_band"]
    extra = {}
    for key, value in outputs.items():
        if key != "per_band" and np.ndim(value) == 3 and np.shape(value) == np.shape(per_band):
            extra[f"{name}: {key}"] = {"map": np.mean(value, axis=-1), "per_band": value}
    return extra


def evaluate(config, workdir: str, output_dir: str | None = None, variables=None, method=None) -> dict:
    """Maps, metrics, PNGs and the gallery of the validation paintings."""
    method = method or methods.build(config)
    scenes = load_split(config, config.data.val_split)
    if variables is None:
        variables = trained_variables(config, workdir, method, scenes[0])
    out = os.path.join(output_dir or workdir, OUTPUT_DIR)
    os.makedirs(out, exist_ok=True)
    rows, entries = [], []
    for scene in scenes:
        outputs = jax.device_get(method.dissimilarity(variables, method.collate([method.item(scene)], None)))
        outputs = {k: np.asarray(v)[0] for k, v in outputs.items()}
        if "collage" not in outputs:
            collage = dis.collage(jnp.asarray(outputs["per_band"])[None], threshold=float(config.eval.threshold))
            outputs["collage"] = np.asarray(jax.device_get(collage["collage"]))[0]
        row = {"painting": scene["name"], "method": method.name}
        if "hidden" in scene:
            row.update(recovery.recovery_metrics(outputs["map"], scene["hidden"], scene["hidden_mask"]))
        rows.append(row)
        stem = os.path.join(out, f"{scene['name']}_{method.name}")
        _png16(f"{stem}_map.png", outputs["map"])
        _png8(
            f"{stem}_overlay.png",
            np.asarray(dis.overlay(jnp.asarray(scene["rgb"])[None], jnp.asarray(outputs["map"])[None]))[0],
        )
        # Collage: the band (1-based) that differs most at each pixel, 0 where below the threshold.
        _png8(f"{stem}_collage.png", (np.asarray(outputs["collage"]) + 1).astype(np.uint8))
        np.savez_compressed(f"{stem}_outputs.npz", **outputs)
        entries.append(gallery.painting_entry(scene, {method.name: outputs, **_extra_maps(method.name, outputs)}))
    summary = {
        "method": method.name,
        "config": config.get("config_name", ""),
        "paintings": rows,
        "mean": recovery.mean_metrics(rows),
    }
    files.write_text_atomic(os.path.join(out, "results.json"), json.dumps(summary, indent=1, default=float) + "\n")
    counts = gallery.write_gallery(
        os.path.join(out, "gallery.html"), entries, title=f"Hidden-art extraction: {method.name}"
    )
    print(f"[{method.name}] validation mean: {json.dumps(summary['mean'], default=float)}", flush=True)
    print(f"[{method.name}] wrote {out}/results.json and gallery.html ({counts['images']} images)", flush=True)
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    files.write_text_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=1) + "\n")
    method = methods.build(config)
    variables = train(config, workdir, method, load_split(config, config.data.train_split))
    return evaluate(config, workdir, variables=variables, method=method)
