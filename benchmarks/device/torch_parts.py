"""The PyTorch peers of run_gpu.py on the same GPU, each part in a process of its own.

    python benchmarks/device/torch_parts.py PART --plan PLAN_JSON --out PART_JSON

PART is one of paper_peer, draem_peer, baseline_peer; the rows mirror the JAX parts' rows
(jax_parts.py) so that run_gpu.py can put each beside ours.

  paper_peer     the UNet++ / U-Net DRAEM variant of benchmarks/peer/unetpp_torch_bench.py (its
                 network, loss and Adam step, imported from it), fp32 and bf16 (torch.autocast).
  draem_peer     anomalib's DraemModel when anomalib imports (its wheel carried); otherwise DRAEM's
                 two sub-networks as anomalib and the DRAEM paper build them (reconstructive: width
                 128, 5 levels, no skips; discriminative: width 64, 6 levels, skips), written here
                 with unetpp_torch_bench.py's VGG block; the loss and step as paper_peer's.
  baseline_peer  STFPM: a frozen ResNet-18 teacher and a trainable student (timm, random weights, as
                 anomalib's STFPMModel with layers 1-3), STFPM's loss, SGD(lr 0.4, momentum 0.9,
                 weight decay 1e-3) as anomalib's; inference = the product of the per-layer maps at
                 the input size.
Timing: torch.backends.cudnn.benchmark on (cuDNN picks its algorithms, as XLA autotunes), `warmup`
untimed calls, median of `repeats` timed calls, each followed by torch.cuda.synchronize().
Inputs come from torch's generator, not the data pipeline (the JAX train step synthesises its
anomalies inside the step; the peer's step has no synthesis: ours pays for it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "peer"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from unetpp_torch_bench import PaperDraem, SSIMLoss, VGGBlock, focal_loss  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def device_name() -> str:
    if DEVICE.type == "cuda":
        return f"gpu:{torch.cuda.get_device_name(0)}"
    return "cpu"


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


class Part:
    def __init__(self, name: str, plan: dict, out: str):
        self.name, self.plan, self.out = name, plan, out
        self.report = {"part": name, "rows": [], "skipped_rows": [], "notes": []}

    def write(self) -> None:
        with open(self.out + ".tmp", "w") as f:
            json.dump(self.report, f, indent=1)
        os.replace(self.out + ".tmp", self.out)

    def timed_row(self, what: dict, fn) -> None:
        left = self.plan["deadline"] - time.time()
        if left < self.plan.get("min_row_s", 5.0):
            self.report["skipped_rows"].append({**what, "reason": f"part budget spent ({left:.0f} s left)"})
            self.write()
            return
        t0 = time.perf_counter()
        for _ in range(self.plan["warmup"] + 1):  # + 1: cudnn.benchmark's search on the first call
            fn()
        sync()
        times = []
        for _ in range(self.plan["repeats"]):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        row = {
            **what,
            "side": "peer",
            "device": device_name(),
            "median_ms": 1e3 * median,
            "ms_per_image": 1e3 * median / what["batch"],
            "images_per_s": what["batch"] / median,
            "all_ms": [round(1e3 * t, 3) for t in times],
            "warmup": self.plan["warmup"] + 1,
            "repeats": self.plan["repeats"],
            "row_wall_s": round(time.perf_counter() - t0, 2),
        }
        self.report["rows"].append(row)
        print(f"[{self.name}] {what}: {row['median_ms']:.2f} ms/call", flush=True)
        self.write()


def _autocast(dtype: str):
    if DTYPES[dtype] is None:
        return torch.autocast(DEVICE.type, enabled=False)
    return torch.autocast(DEVICE.type, dtype=DTYPES[dtype])


def _inputs(batch: int, size: int, channels: int):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, channels, size, size, generator=g)
    aug = (x + 0.2 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.9).float()
    return x.to(DEVICE), aug.to(DEVICE), mask.to(DEVICE)


def _draem_style_rows(part: Part, model: nn.Module, spec: dict) -> None:
    """Train (fwd, 2 SSIM + MSE + focal, bwd, Adam) and infer (softmax map, max) rows of a
    reconstructive + discriminative pair, as unetpp_torch_bench.py times them."""
    channels = spec["channels"]
    model = model.to(DEVICE)
    ssim = SSIMLoss(channels).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def make(mode: str, dtype: str, batch: int):
        x, aug, mask = _inputs(batch, spec["size"], channels)

        def train():
            model.train()
            opt.zero_grad(set_to_none=True)
            with _autocast(dtype):
                rec = model.reconstructive_subnetwork(aug)
                pred = model.discriminative_subnetwork(torch.cat([aug, rec], 1))
            rec, pred = rec.float(), pred.float()
            loss = 2 * ssim(rec, x) + F.mse_loss(rec, x) + focal_loss(pred, mask)
            loss.backward()
            opt.step()

        def infer():
            model.eval()
            with torch.inference_mode(), _autocast(dtype):
                rec = model.reconstructive_subnetwork(x)
                amap = torch.softmax(model.discriminative_subnetwork(torch.cat([x, rec], 1)).float(), 1)[:, 1]
                return amap, amap.amax(dim=(-2, -1))

        return train if mode == "train" else infer

    for mode, dtype, batch in spec["rows"]:
        what = {"model": spec["model"], "mode": mode, "dtype": dtype, "size": spec["size"], "batch": batch}
        part.timed_row(what, make(mode, dtype, batch))


def part_paper_peer(part: Part) -> None:
    spec = part.plan["paper"]
    model = PaperDraem(spec["channels"])
    part.report["result"] = {
        "network": "benchmarks/peer/unetpp_torch_bench.py PaperDraem",
        "params": sum(p.numel() for p in model.parameters()),
    }
    _draem_style_rows(part, model, spec)


class DraemReconstructive(nn.Module):
    """DRAEM's reconstructive sub-network (anomalib's ReconstructiveSubNetwork, base width 128)."""

    def __init__(self, channels: int, bw: int = 128) -> None:
        super().__init__()
        widths = [bw * m for m in (1, 2, 4, 8, 8)]
        self.enc = nn.ModuleList(
            VGGBlock(channels if i == 0 else widths[i - 1], w, w, act="relu") for i, w in enumerate(widths)
        )
        self.ups, self.decs = nn.ModuleList(), nn.ModuleList()
        prev = widths[-1]
        for up_w, out_w in ((8, 4), (4, 2), (2, 1), (1, 1)):
            self.ups.append(_up_conv(prev, bw * up_w))
            self.decs.append(VGGBlock(bw * up_w, bw * up_w, bw * out_w, act="relu"))
            prev = bw * out_w
        self.out = nn.Conv2d(bw, channels, 3, padding=1)

    def forward(self, x):
        h = x
        for i, block in enumerate(self.enc):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
        for up, dec in zip(self.ups, self.decs):
            h = dec(up(h))
        return self.out(h)


class DraemDiscriminative(nn.Module):
    """DRAEM's discriminative sub-network (anomalib's DiscriminativeSubNetwork, base width 64)."""

    def __init__(self, in_channels: int, bw: int = 64) -> None:
        super().__init__()
        widths = [bw * m for m in (1, 2, 4, 8, 8, 8)]
        self.enc = nn.ModuleList(
            VGGBlock(in_channels if i == 0 else widths[i - 1], w, w, act="relu") for i, w in enumerate(widths)
        )
        self.ups, self.decs = nn.ModuleList(), nn.ModuleList()
        prev, skips = widths[-1], widths[-2::-1]
        for up_mult, skip in zip((8, 4, 2, 1, 1), skips):
            self.ups.append(_up_conv(prev, bw * up_mult))
            self.decs.append(VGGBlock(bw * up_mult + skip, bw * up_mult, bw * up_mult, act="relu"))
            prev = bw * up_mult
        self.out = nn.Conv2d(bw, 2, 3, padding=1)

    def forward(self, x):
        skips, h = [], x
        for i, block in enumerate(self.enc):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        skips.pop()
        for up, dec in zip(self.ups, self.decs):
            h = dec(torch.cat([up(h), skips.pop()], 1))
        return self.out(h)


def _up_conv(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class OwnDraem(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reconstructive_subnetwork = DraemReconstructive(channels)
        self.discriminative_subnetwork = DraemDiscriminative(2 * channels)


# tests/test_models.py's counts of anomalib's sub-networks for 3 channels (ours match them).
ANOMALIB_DRAEM_PARAMS = {"reconstructive": 69_048_579, "discriminative": 28_374_146}


def part_draem_peer(part: Part) -> None:
    spec = part.plan["draem"]
    try:
        from anomalib.models.image.draem.torch_model import DraemModel  # noqa: PLC0415  (optional wheel)

        model, network = DraemModel(), "anomalib DraemModel"
    except Exception as e:  # not carried, or its imports fail offline
        part.report["notes"].append(f"anomalib not importable ({type(e).__name__}: {e}); DRAEM's networks written here")
        model, network = OwnDraem(spec["channels"]), "torch_parts.OwnDraem (anomalib's layer list)"
    params = {
        "reconstructive": sum(p.numel() for p in model.reconstructive_subnetwork.parameters()),
        "discriminative": sum(p.numel() for p in model.discriminative_subnetwork.parameters()),
    }
    part.report["result"] = {"network": network, "params": params, "anomalib_params_3ch": ANOMALIB_DRAEM_PARAMS}
    _draem_style_rows(part, model, spec)


class Stfpm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import timm  # noqa: PLC0415  (only this part needs it)

        make = lambda: timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3))  # noqa: E731
        self.teacher, self.student = make().eval(), make()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def features(self, x):
        with torch.no_grad():
            teacher = self.teacher(x)
        return teacher, self.student(x)


def _stfpm_loss(teacher, student):
    loss = 0.0
    for t, s in zip(teacher, student):
        h, w = t.shape[-2:]
        loss = loss + 0.5 / (h * w) * torch.sum((F.normalize(t, dim=1) - F.normalize(s, dim=1)) ** 2) / t.shape[0]
    return loss


def _stfpm_map(teacher, student, size: int):
    amap = 1.0
    for t, s in zip(teacher, student):
        d = 0.5 * torch.sum((F.normalize(t, dim=1) - F.normalize(s, dim=1)) ** 2, dim=1, keepdim=True)
        amap = amap * F.interpolate(d, size=(size, size), mode="bilinear", align_corners=False)
    return amap


def part_baseline_peer(part: Part) -> None:
    spec = part.plan["baseline"]
    model = Stfpm().to(DEVICE)
    opt = torch.optim.SGD(model.student.parameters(), lr=0.4, momentum=0.9, weight_decay=1e-3)
    part.report["result"] = {
        "network": "STFPM, timm resnet18 layers 1-3 (random weights), written here",
        "trainable_params": sum(p.numel() for p in model.student.parameters()),
    }
    size = spec["size"]
    for mode, batch in spec["rows"]:
        x = _inputs(batch, size, 3)[0]

        def train(x=x):
            model.student.train()
            opt.zero_grad(set_to_none=True)
            _stfpm_loss(*model.features(x)).backward()
            opt.step()

        def infer(x=x):
            model.eval()
            with torch.inference_mode():
                amap = _stfpm_map(*model.features(x), size)
                return amap, amap.amax(dim=(-2, -1))

        what = {"model": spec["name"], "mode": mode, "dtype": "float32", "size": size, "batch": batch}
        part.timed_row(what, train if mode == "train" else infer)


PARTS = {"paper_peer": part_paper_peer, "draem_peer": part_draem_peer, "baseline_peer": part_baseline_peer}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=sorted(PARTS))
    p.add_argument("--plan", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    part = Part(args.part, json.loads(args.plan), args.out)
    part.report["env"] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device_name(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    part.write()
    PARTS[args.part](part)
    part.report["done"] = True
    part.write()


if __name__ == "__main__":
    main()
