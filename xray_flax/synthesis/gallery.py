"""A PNG gallery of synthetic anomalies, for a person to look at.

    python -m xray_flax.synthesis.gallery --out DIR [--dtd_root ROOT]
        [--patch_size 256] [--channels 1] [--seed 0] [--images FOLDER]

Writes DIR/synthesis_gallery.png: 16 samples, each as three tiles --
normal patch | with the synthetic anomaly (mask outlined in red) | mask --
and DIR/synthesis_gallery.json with the per-sample mask areas.

Normal patches come from --images (any PIL-readable files, random crops) or,
by default, from a simulated anomaly-free radiograph (xray_flax.data.simulate;
procedural fractal noise if that module is unavailable). Every sample is drawn
with anomaly_probability = 1 so all 16 show an anomaly (an empty Perlin mask
can still give an unchanged sample; its caption says so).
"""

import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from xray_flax import errors, program_flags
from xray_flax.synthesis import config as config_lib
from xray_flax.synthesis import synthesize, textures

try:
    from xray_flax.data import simulate
except ImportError:  # without it, the normal patches are fractal noise
    simulate = None

SAMPLES = 16
SAMPLES_PER_ROW = 4
CAPTION_HEIGHT = 14


def _crops(image: np.ndarray, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    height, width = image.shape[:2]
    if height < size or width < size:
        scale = size / min(height, width)
        pil = Image.fromarray((image * 255).astype(np.uint8).squeeze())
        pil = pil.resize((int(np.ceil(width * scale)), int(np.ceil(height * scale))), Image.Resampling.BILINEAR)
        image = np.asarray(pil, np.float32).reshape(pil.height, pil.width, -1) / 255
        height, width = image.shape[:2]
    out = []
    for _ in range(count):
        y = rng.integers(0, height - size + 1)
        x = rng.integers(0, width - size + 1)
        out.append(image[y : y + size, x : x + size])
    return out


def _normal_patches_from_folder(folder: str, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    paths = sorted(p for p in pathlib.Path(folder).rglob("*") if p.is_file())
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("L" if channels == 1 else "RGB"), np.float32) / 255.0
        except (OSError, ValueError):
            continue  # not an image: skip quietly, the folder may hold other files
        images.append(array.reshape(array.shape[0], array.shape[1], channels))
    if not images:
        raise FileNotFoundError(f"No readable images under {folder}")
    picks = rng.integers(0, len(images), SAMPLES)
    return np.stack([_crops(images[i], 1, size, rng)[0] for i in picks])


def _simulated_normal_patches(size: int, channels: int, seed: int) -> np.ndarray:
    """Crops of simulated anomaly-free radiographs (inside the film margin)."""
    rng = np.random.default_rng(seed)
    patches = []
    for index in range(2):  # one wood panel, one canvas
        if simulate is not None:
            params = simulate.SimulationParams(
                height=4 * size,
                width=4 * size,
                paint_losses=0,
                white_spots=0,
                nails=0,
                foreign_objects=0,
                scale_counts_to_area=False,
                seed=seed,
            )
            scan, _ = simulate.simulate_scan(params, index)
            scan = scan.astype(np.float32)
            margin = int(params.margin * 4 * size) + 2
            scan = scan[margin:-margin, margin:-margin]
            lo, hi = np.percentile(scan, [0.5, 99.5])
            image = np.clip((scan - lo) / max(hi - lo, 1.0), 0, 1)
        else:
            noise = textures.fractal_noise(jax.random.key(seed + index), (4 * size, 4 * size))
            image = 0.3 + 0.4 * np.asarray(noise)
        patches += _crops(image[..., None], SAMPLES // 2, size, rng)
    patches = np.stack(patches).astype(np.float32)
    return np.repeat(patches, channels, axis=-1) if channels == 3 else patches


def _to_pil(patch: np.ndarray, tile: int) -> Image.Image:
    array = (np.clip(patch, 0, 1) * 255).round().astype(np.uint8)
    pil = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    return pil.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)


def _outlined(patch: np.ndarray, mask: np.ndarray, tile: int) -> Image.Image:
    """The patch with the mask boundary drawn in red."""
    pil = _to_pil(patch, tile)
    small = (
        np.asarray(
            Image.fromarray((mask[..., 0] * 255).astype(np.uint8)).resize((tile, tile), Image.Resampling.NEAREST)
        )
        > 127
    )
    edge = small & ~(np.roll(small, 1, 0) & np.roll(small, -1, 0) & np.roll(small, 1, 1) & np.roll(small, -1, 1))
    array = np.asarray(pil).copy()
    array[edge] = (255, 40, 40)
    return Image.fromarray(array)


def render_gallery(normal: np.ndarray, out: dict, tile: int) -> Image.Image:
    """normal [16, H, W, C]; out from synthesize_batch -> one RGB image."""
    rows = -(-len(normal) // SAMPLES_PER_ROW)
    width = SAMPLES_PER_ROW * 3 * tile + (SAMPLES_PER_ROW - 1) * 8
    height = rows * (tile + CAPTION_HEIGHT)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    image, mask = np.asarray(out["image"]), np.asarray(out["mask"])
    has = np.asarray(out["has_anomaly"])
    for i in range(len(normal)):
        row, col = divmod(i, SAMPLES_PER_ROW)
        x = col * (3 * tile + 8)
        y = row * (tile + CAPTION_HEIGHT)
        canvas.paste(_to_pil(normal[i], tile), (x, y))
        canvas.paste(_outlined(image[i], mask[i], tile), (x + tile, y))
        canvas.paste(_to_pil(mask[i], tile), (x + 2 * tile, y))
        caption = f"#{i} mask {100 * mask[i].mean():.1f}%" if has[i] else f"#{i} empty mask: unchanged"
        draw.text((x + 2, y + tile + 1), caption, fill=(0, 0, 0))
    return canvas


def make_gallery(
    out_dir: str,
    dtd_root: str = "",
    patch_size: int = 256,
    channels: int = 1,
    seed: int = 0,
    images: str = "",
    tile: int = 128,
) -> pathlib.Path:
    """Renders the gallery; returns the PNG path."""
    cfg = config_lib.defaults()
    cfg.dtd_root = dtd_root
    cfg.anomaly_probability = 1.0
    spec = synthesize.SynthesisSpec.from_config(cfg, channels)
    bank = textures.load_texture_bank(cfg, patch_size, channels)
    rng = np.random.default_rng(seed)
    normal = (
        _normal_patches_from_folder(images, patch_size, channels, rng)
        if images
        else _simulated_normal_patches(patch_size, channels, seed)
    )
    out = synthesize.synthesize_batch(jax.random.key(seed), normal, bank, spec)
    os.makedirs(out_dir, exist_ok=True)
    path = pathlib.Path(out_dir) / "synthesis_gallery.png"
    render_gallery(normal, out, tile).save(path)
    summary = dict(
        spec=dataclasses.asdict(spec),
        seed=seed,
        patch_size=patch_size,
        normal_source=images or "simulated radiograph",
        mask_area=[float(m.mean()) for m in np.asarray(out["mask"])],
        has_anomaly=[float(h) for h in np.asarray(out["has_anomaly"])],
    )
    (pathlib.Path(out_dir) / "synthesis_gallery.json").write_text(json.dumps(summary, indent=1))
    return path


def _flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string("out", None, "output folder", required=True, flag_values=fv)
    flags.DEFINE_string("dtd_root", "", "DTD-layout folder (<root>/images/*/*.jpg)", flag_values=fv)
    flags.DEFINE_integer("patch_size", 256, "side of the normal patches, pixels", flag_values=fv)
    flags.DEFINE_enum("channels", "1", ["1", "3"], "grey (1) or colour (3) patches", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the anomalies and the simulated patches", flag_values=fv)
    flags.DEFINE_string("images", "", "folder of normal images (default: simulated)", flag_values=fv)
    flags.DEFINE_integer("tile", 128, "display size of each tile, pixels", flag_values=fv)
    return fv


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; `argv` without the program name (default: sys.argv[1:]). Returns the exit status."""
    args = _flag_values()
    try:
        if program_flags.parse(args, argv, "python -m xray_flax.synthesis.gallery", __doc__) is None:
            return 0
    except errors.UserError as error:
        return program_flags.report(error)
    channels = int(args.channels)
    path = make_gallery(args.out, args.dtd_root, args.patch_size, channels, args.seed, args.images, args.tile)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
