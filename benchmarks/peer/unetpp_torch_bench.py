#!/usr/bin/env python
"""Peer benchmark: the paper's DRAEM variant (UNet++ reconstructive + U-Net discriminative), PyTorch, CPU.

Model (written here, no anomalib code):
  reconstructive = Nested U-Net (UNet++), VGG blocks (conv3x3+BN+LeakyReLU(0.2) twice),
    filters 32/64/128/256/512, MaxPool2d(2), bilinear x2 upsample (align_corners=True),
    X[i,j] = VGG(cat(X[i,0..j-1], up(X[i+1,j-1]))), one 1x1 output conv on X[0,4]
    (no deep supervision, no output activation); in = out = --channels (default 1).
  discriminative = U-Net, encoder levels 64/128/256/512 with a 512-wide bottleneck
    (milesial-style bilinear U-Net: 4 max-pools, 512x512 -> 32x32), each level two
    (conv3x3+BN+ReLU) blocks, bilinear x2 upsample, concat skips, 1x1 conv to 2 channels;
    input = cat(image, reconstruction) (2 channels for grayscale).
Loss = 2*(1-SSIM) (11x11 gaussian window, sigma 1.5, C1=0.01^2, C2=0.03^2, zero 'same'
  padding, mean over map) + MSE(rec, clean) + focal(gamma=2, alpha=1, mean) on softmax of the
  2-channel prediction vs the binary anomaly mask.  Optimizer Adam(lr=1e-4).
Inference = eval mode, torch.inference_mode, softmax anomaly map (channel 1) + max score.

Usage (defaults reproduce benchmarks/peer/RESULTS.md):
  /tmp/peer/bin/python benchmarks/peer/unetpp_torch_bench.py --out benchmarks/results/unetpp_torch.json
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")

import bench_common as bc  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


class VGGBlock(nn.Module):
    def __init__(self, cin: int, cmid: int, cout: int, act: str = "leaky") -> None:
        super().__init__()
        mk = (lambda: nn.LeakyReLU(0.2, inplace=True)) if act == "leaky" else (lambda: nn.ReLU(inplace=True))
        self.body = nn.Sequential(
            nn.Conv2d(cin, cmid, 3, padding=1),
            nn.BatchNorm2d(cmid),
            mk(),
            nn.Conv2d(cmid, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            mk(),
        )

    def forward(self, x):
        return self.body(x)


class NestedUNet(nn.Module):
    """UNet++ (Zhou et al. 2018), wiring as in the common 'pytorch-nested-unet' implementation."""

    def __init__(self, in_ch: int = 1, out_ch: int = 1, filters=(32, 64, 128, 256, 512)) -> None:
        super().__init__()
        f = list(filters)
        L = len(f)  # 5 levels: X[i, j] for i + j <= 4
        self.L = L
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.nodes = nn.ModuleDict()
        for i in range(L):
            self.nodes[f"{i}_0"] = VGGBlock(in_ch if i == 0 else f[i - 1], f[i], f[i])
        for j in range(1, L):
            for i in range(L - j):
                cin = f[i] * j + f[i + 1]
                self.nodes[f"{i}_{j}"] = VGGBlock(cin, f[i], f[i])
        self.final = nn.Conv2d(f[0], out_ch, 1)

    def forward(self, x):
        L = self.L
        X = {}
        h = x
        for i in range(L):
            h = self.nodes[f"{i}_0"](h if i == 0 else self.pool(h))
            X[(i, 0)] = h
        for j in range(1, L):
            for i in range(L - j):
                cat = [X[(i, k)] for k in range(j)] + [self.up(X[(i + 1, j - 1)])]
                X[(i, j)] = self.nodes[f"{i}_{j}"](torch.cat(cat, 1))
        return self.final(X[(0, L - 1)])


class UNet(nn.Module):
    """Bilinear U-Net: 64/128/256/512 encoder + 512 bottleneck (4 max-pools), concat skips."""

    def __init__(self, in_ch: int = 2, out_ch: int = 2, widths=(64, 128, 256, 512)) -> None:
        super().__init__()
        w = list(widths)
        self.inc = VGGBlock(in_ch, w[0], w[0], act="relu")
        self.downs = nn.ModuleList()
        enc = w + [w[-1]]  # 64,128,256,512,512(bottleneck)
        for a, b in zip(enc[:-1], enc[1:]):
            self.downs.append(VGGBlock(a, b, b, act="relu"))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.ups = nn.ModuleList()
        # decoder: cat(up(deep), skip) -> VGG(cin, cin//2, out)
        # (512+512, 256+256, 128+128, 64+64) -> (256, 128, 64, 64) at the paper's widths; other
        # widths (the CPU default's 1/4) scale the same way.
        dec_in = [2 * w[3], 2 * w[2], 2 * w[1], 2 * w[0]]
        dec_out = [w[2], w[1], w[0], w[0]]
        for cin, cout in zip(dec_in, dec_out):
            self.ups.append(VGGBlock(cin, cin // 2, cout, act="relu"))
        self.outc = nn.Conv2d(w[0], out_ch, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        h = skips[0]
        for d in self.downs:
            h = d(self.pool(h))
            skips.append(h)
        h = skips.pop()
        for u in self.ups:
            s = skips.pop()
            h = u(torch.cat([s, self.up(h)], 1))
        return self.outc(h)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    c = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(c**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


class SSIMLoss(nn.Module):
    def __init__(self, channels: int, size: int = 11, sigma: float = 1.5) -> None:
        super().__init__()
        self.register_buffer("w", gaussian_window(size, sigma).expand(channels, 1, size, size).contiguous())
        self.pad, self.c = size // 2, channels

    def forward(self, a, b):
        w, p, c = self.w, self.pad, self.c
        mu_a, mu_b = F.conv2d(a, w, padding=p, groups=c), F.conv2d(b, w, padding=p, groups=c)
        saa = F.conv2d(a * a, w, padding=p, groups=c) - mu_a**2
        sbb = F.conv2d(b * b, w, padding=p, groups=c) - mu_b**2
        sab = F.conv2d(a * b, w, padding=p, groups=c) - mu_a * mu_b
        C1, C2 = 0.01**2, 0.03**2
        ssim = ((2 * mu_a * mu_b + C1) * (2 * sab + C2)) / ((mu_a**2 + mu_b**2 + C1) * (saa + sbb + C2))
        return 1 - ssim.mean()


def focal_loss(logits, target, gamma: float = 2.0):
    logp = F.log_softmax(logits, dim=1).gather(1, target.long())
    pt = logp.exp()
    return (-((1 - pt) ** gamma) * logp).mean()


class PaperDraem(nn.Module):
    def __init__(self, channels: int = 1, width_multiplier: float = 1.0) -> None:
        super().__init__()
        rec = tuple(int(f * width_multiplier) for f in (32, 64, 128, 256, 512))
        dis = tuple(int(f * width_multiplier) for f in (64, 128, 256, 512))
        self.reconstructive_subnetwork = NestedUNet(channels, channels, rec)
        self.discriminative_subnetwork = UNet(2 * channels, 2, dis)

    def forward(self, x):
        rec = self.reconstructive_subnetwork(x)
        pred = self.discriminative_subnetwork(torch.cat([x, rec], 1))
        if self.training:
            return rec, pred
        amap = torch.softmax(pred, 1)[:, 1]
        return amap.amax(dim=(-2, -1)), amap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bc.add_common_args(p)
    p.add_argument("--channels", type=int, default=1)
    args = p.parse_args()

    bc.set_threads(args.threads)
    torch.manual_seed(args.seed)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = PaperDraem(args.channels).to(memory_format=mf)
    ssim = SSIMLoss(args.channels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def criterion(x, rec, mask, pred):
        return 2 * ssim(rec, x) + F.mse_loss(rec, x) + focal_loss(pred, mask)

    def inputs(batch: int, size: int):
        g = torch.Generator().manual_seed(args.seed)
        x = torch.rand(batch, args.channels, size, size, generator=g).contiguous(memory_format=mf)
        aug = (x + 0.2 * torch.rand(x.shape, generator=g)).clamp(0, 1).contiguous(memory_format=mf)
        mask = (torch.rand(batch, 1, size, size, generator=g) > 0.9).float()
        return x, aug, mask

    def make_train(batch: int, size: int):
        x, aug, mask = inputs(batch, size)
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            rec, pred = model(aug)
            loss = criterion(x, rec, mask, pred)
            loss.backward()
            opt.step()
            return loss

        return step

    def make_infer(batch: int, size: int):
        x, _, _ = inputs(batch, size)
        model.eval()

        def infer():
            with torch.inference_mode():
                return model(x)

        return infer

    rec_p = bc.count_params(model.reconstructive_subnetwork)
    dis_p = bc.count_params(model.discriminative_subnetwork)
    print(
        f"paper DRAEM (UNet++ rec + U-Net disc): reconstructive {rec_p:,} params, discriminative {dis_p:,} params, "
        f"total {rec_p + dis_p:,}; torch {torch.__version__}, threads {torch.get_num_threads()}",
        flush=True,
    )
    rows, flops = bc.run_suite(
        args,
        "paper UNet++/U-Net DRAEM (torch)",
        make_train,
        make_infer,
        flop_notes="per image, batch 1; FlopCounterMode (conv/matmul only, 2*MAC, SSIM window convs included); "
        "train = fwd+loss+bwd",
    )
    sub_flops = {}
    if not args.no_flops:
        model.eval()
        for s in sorted(set(bc.parse_list(args.infer_sizes) + bc.parse_list(args.train_sizes))):
            x, _, _ = inputs(1, s)
            with torch.inference_mode():
                fr = bc.count_flops(lambda x=x: model.reconstructive_subnetwork(x))
                rec = model.reconstructive_subnetwork(x)
                fd = bc.count_flops(lambda x=x, rec=rec: model.discriminative_subnetwork(torch.cat([x, rec], 1)))
            sub_flops[f"reconstructive_fwd@{s}"] = fr
            sub_flops[f"discriminative_fwd@{s}"] = fd
        print("sub-network forward GFLOP (batch 1):", {k: round(v / 1e9, 2) for k, v in sub_flops.items()})
    bc.write_json(
        args.out,
        {
            "model": "paper DRAEM variant: UNet++(VGG, 32..512) reconstructive + U-Net(64..512) discriminative",
            "framework": "pytorch",
            "env": bc.env_info(),
            "config": {
                "channels": args.channels,
                "channels_last": args.channels_last,
                "loss": "2*(1-SSIM 11x11 g1.5) + MSE + focal(gamma 2)",
                "optimizer": "Adam(lr=1e-4)",
            },
            "params": {"reconstructive": rec_p, "discriminative": dis_p, "total": rec_p + dis_p},
            "flops_per_image": flops,
            "subnetwork_fwd_flops_per_image": sub_flops,
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
