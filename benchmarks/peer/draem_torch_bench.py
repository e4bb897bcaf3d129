#!/usr/bin/env python
"""Peer benchmark: anomalib's DRAEM (PyTorch) on CPU.

Measures, with torch.set_num_threads(--threads):
  * train step (forward + DraemLoss + backward + Adam step) time per image,
  * inference (eval mode, torch.inference_mode, softmax anomaly map + max score)
    time per image,
  * parameter count of each sub-network and matmul/conv FLOPs (FlopCounterMode).

The train step mirrors anomalib's Draem.training_step minus the data-side
augmenter (Perlin-noise anomaly synthesis): the model is fed a synthetic
"augmented" image, the loss compares the reconstruction with the clean image,
and the focal term uses a random binary mask.  Optimizer = Adam(lr=1e-4) as in
anomalib's configure_optimizers.

Usage (defaults reproduce benchmarks/peer/RESULTS.md):
  /tmp/peer/bin/python benchmarks/peer/draem_torch_bench.py --out benchmarks/results/draem_torch.json
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")

import bench_common as bc  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bc.add_common_args(p)
    p.add_argument("--channels", type=int, default=3, help="input channels (anomalib's DraemModel is built for 3)")
    p.add_argument("--sspcab", action="store_true", help="DraemModel(sspcab=True)")
    args = p.parse_args()

    import torch

    bc.set_threads(args.threads)
    torch.manual_seed(args.seed)

    loss_impl = "anomalib.models.image.draem.loss.DraemLoss"
    try:
        import anomalib
        from anomalib.models.image.draem.torch_model import (
            DiscriminativeSubNetwork,
            DraemModel,
            ReconstructiveSubNetwork,
        )

        anomalib_version = anomalib.__version__
    except Exception as e:  # pragma: no cover - environment dependent
        raise SystemExit(f"cannot import anomalib DRAEM: {e!r}") from e
    try:
        from anomalib.models.image.draem.loss import DraemLoss

        criterion = DraemLoss()
    except Exception as e:  # fallback: MSE + 2*(1-SSIM)/… via kornia
        print(f"DraemLoss import failed ({e!r}); using kornia MSE+SSIM+focal fallback")
        from kornia.losses import FocalLoss, SSIMLoss

        loss_impl = "fallback: MSE + 2*kornia.SSIMLoss(11) + kornia.FocalLoss(alpha=1)"
        _mse, _focal, _ssim = torch.nn.MSELoss(), FocalLoss(alpha=1, reduction="mean"), SSIMLoss(window_size=11)

        def criterion(x, rec, mask, pred):
            return _mse(rec, x) + 2 * _ssim(rec, x) + _focal(pred, mask.squeeze(1).long())

    model = DraemModel(sspcab=args.sspcab)
    if args.channels != 3:
        # anomalib hard-codes in_channels=3 / 6; swap in sub-networks built for other channel counts.
        model.reconstructive_subnetwork = ReconstructiveSubNetwork(
            in_channels=args.channels, out_channels=args.channels, sspcab=args.sspcab
        )
        model.discriminative_subnetwork = DiscriminativeSubNetwork(in_channels=2 * args.channels, out_channels=2)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

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
                out = model(x)  # InferenceBatch(pred_score, anomaly_map)
            return out

        return infer

    rec_p = bc.count_params(model.reconstructive_subnetwork)
    dis_p = bc.count_params(model.discriminative_subnetwork)
    print(
        f"anomalib {anomalib_version} DraemModel: reconstructive {rec_p:,} params, discriminative {dis_p:,} params, "
        f"total {rec_p + dis_p:,}; torch {torch.__version__}, threads {torch.get_num_threads()}",
        flush=True,
    )

    rows, flops = bc.run_suite(
        args,
        "anomalib DRAEM (torch)",
        make_train,
        make_infer,
        flop_notes="per image, batch 1; FlopCounterMode (conv/matmul only, 2*MAC); train = fwd+loss+bwd",
    )
    # per-sub-network forward FLOPs at each inference size (batch 1)
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
            "model": "anomalib DRAEM (DraemModel)",
            "framework": "pytorch",
            "env": bc.env_info({"anomalib": anomalib_version}),
            "config": {
                "channels": args.channels,
                "sspcab": args.sspcab,
                "channels_last": args.channels_last,
                "loss": loss_impl,
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
