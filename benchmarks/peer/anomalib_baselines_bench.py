#!/usr/bin/env python
"""Peer benchmark: anomalib 2.7's STFPM, Reverse Distillation, FastFlow, CS-Flow and CFA (PyTorch) on CPU.

The PyTorch side of benchmarks/bench_baselines.py: for each model, with torch.set_num_threads(--threads),

  * train step = zero_grad, forward of the torch model in train mode, the model's anomalib loss,
    backward, and one step of the optimiser its lightning module's configure_optimizers builds
    (STFPM: SGD(lr 0.4, momentum 0.9, wd 1e-3) on the student; RD: Adam(lr 5e-3, betas (0.5, 0.99)) on
    bottleneck + decoder; FastFlow: Adam(lr 1e-3, wd 1e-5); CS-Flow: Adam(lr 2e-4, eps 1e-4, wd 1e-5,
    betas (0.5, 0.9)); CFA: AdamW(lr 1e-3, wd 5e-4, amsgrad)), exactly as each training_step calls them;
  * inference = model.eval() + torch.inference_mode(), the torch model's forward returning its
    InferenceBatch (anomaly map at the input size and image score);
  * backbone = the frozen feature extractor's forward alone (one scale; CS-Flow runs it on 3), inference mode.

Backbones (the same on our side): ResNet-18 for STFPM, RD, FastFlow, CFA (anomalib's `backbone=`
argument); CS-Flow is hard-wired to torchvision's EfficientNet-B5 (features.6.8). All backbones are
randomly initialised: the model hubs are unreachable, and weights do not change the cost. anomalib
asks for pretrained weights in places it does not expose (STFPM's teacher `pre_trained=True`, CFA's
`torchvision.models.get_model_weights(backbone).DEFAULT`, CS-Flow's
`efficientnet_b5(weights=IMAGENET1K_V1)`), so this script patches those three calls to build the same
networks with `weights=None` / `pretrained=False` (see `patch_out_pretrained_weights`); nothing else of
anomalib is changed. CFA's memory bank is initialised as in its `on_train_start`
(`initialize_centroid`) from 2 random batches before timing (not timed).

Inputs are uniform random images in [0, 1], NCHW, 3 channels (anomalib's pre-processor normalisation
is outside the torch model and not timed, on either side). Timing rules, contention guard and JSON
schema: benchmarks/peer/bench_common.py and README.md (warmup untimed calls, median of repeats).

Usage:
  /tmp/peer/bin/python benchmarks/peer/anomalib_baselines_bench.py --models stfpm,fastflow \
      --out benchmarks/results/baselines_speed_anomalib.json
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
import types
import warnings

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("PEERS_DIR", _HERE))  # bench_common.py sits beside this script
warnings.filterwarnings("ignore")

import bench_common as bc  # noqa: E402

MODELS = ("stfpm", "reverse_distillation", "fastflow", "csflow", "cfa")
RESNET = "resnet18"


def patch_out_pretrained_weights() -> list[str]:
    """Make anomalib build its backbones with random weights (no hub download). Returns what was patched."""
    import anomalib.models.image.cfa.torch_model as cfa_tm
    import anomalib.models.image.csflow.torch_model as csflow_tm
    import timm
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    create_model = timm.create_model

    def create_model_random(*a, **kw):
        kw["pretrained"] = False
        return create_model(*a, **kw)

    # anomalib calls `timm.create_model(...)` through the module attribute (TimmFeatureExtractor,
    # FastflowModel), so replacing the attribute reaches every call.
    timm.create_model = create_model_random

    def cfa_feature_extractor(backbone: str, return_nodes: list[str]):
        # = cfa_tm.get_feature_extractor with weights=None instead of get_model_weights(backbone).DEFAULT
        model = getattr(torchvision.models, backbone)(weights=None)
        extractor = create_feature_extractor(model=model, return_nodes=return_nodes)
        extractor.eval()
        return extractor

    cfa_tm.get_feature_extractor = cfa_feature_extractor
    efficientnet_b5 = torchvision.models.efficientnet_b5
    csflow_tm.efficientnet_b5 = lambda weights=None, **kw: efficientnet_b5(weights=None, **kw)
    return [
        "timm.create_model(pretrained=False) [STFPM teacher, RD encoder, FastFlow backbone]",
        "cfa.torch_model.get_feature_extractor: torchvision.models.<backbone>(weights=None)",
        "csflow.torch_model.efficientnet_b5(weights=None)",
    ]


def build(name: str, size: int, seed: int):
    """(model, loss_fn(model_output) -> loss, optimizer, description) as anomalib's lightning module sets them up."""
    import torch

    torch.manual_seed(seed)
    if name == "stfpm":
        from anomalib.models.image.stfpm.loss import STFPMLoss
        from anomalib.models.image.stfpm.torch_model import STFPMModel

        model = STFPMModel(layers=("layer1", "layer2", "layer3"), backbone=RESNET)
        criterion = STFPMLoss()
        opt = torch.optim.SGD(model.student_model.parameters(), lr=0.4, momentum=0.9, dampening=0.0, weight_decay=1e-3)

        def loss_fn(out):
            return criterion(*out)

        desc = "STFPMModel(resnet18, layer1-3) + STFPMLoss, SGD(lr=0.4, momentum=0.9, wd=1e-3) on the student"
    elif name == "reverse_distillation":
        from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
        from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

        model = ReverseDistillationModel(
            backbone=RESNET,
            input_size=(size, size),
            layers=("layer1", "layer2", "layer3"),
            anomaly_map_mode=AnomalyMapGenerationMode.ADD,
            pre_trained=False,
        )
        criterion = ReverseDistillationLoss()
        opt = torch.optim.Adam(
            list(model.decoder.parameters()) + list(model.bottleneck.parameters()), lr=0.005, betas=(0.5, 0.99)
        )

        def loss_fn(out):
            return criterion(*out)

        desc = "ReverseDistillationModel(resnet18, layer1-3, ADD) + loss, Adam(lr=5e-3, betas=(0.5, 0.99))"
    elif name == "fastflow":
        from anomalib.models.image.fastflow.loss import FastflowLoss
        from anomalib.models.image.fastflow.torch_model import FastflowModel

        model = FastflowModel(
            input_size=(size, size),
            backbone=RESNET,
            pre_trained=False,
            flow_steps=8,
            conv3x3_only=False,
            hidden_ratio=1.0,
        )
        criterion = FastflowLoss()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)

        def loss_fn(out):
            return criterion(*out)

        desc = "FastflowModel(resnet18, 8 steps, hidden_ratio 1, conv3x3_only False) + loss, Adam(lr=1e-3, wd=1e-5)"
    elif name == "csflow":
        from anomalib.models.image.csflow.loss import CsFlowLoss
        from anomalib.models.image.csflow.torch_model import CsFlowModel

        model = CsFlowModel(
            input_size=(size, size), cross_conv_hidden_channels=1024, n_coupling_blocks=4, clamp=3, num_channels=3
        )
        model.feature_extractor.eval()
        criterion = CsFlowLoss()
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, eps=1e-4, weight_decay=1e-5, betas=(0.5, 0.9))

        def loss_fn(out):
            return criterion(*out)

        desc = (
            "CsFlowModel(EfficientNet-B5 features.6.8, 3 scales, 4 blocks, hidden 1024, clamp 3) + loss, "
            "Adam(lr=2e-4, eps=1e-4, wd=1e-5, betas=(0.5, 0.9))"
        )
    elif name == "cfa":
        from anomalib.models.image.cfa.loss import CfaLoss
        from anomalib.models.image.cfa.torch_model import CfaModel

        kw = {"num_nearest_neighbors": 3, "num_hard_negative_features": 3, "radius": 1e-5}
        model = CfaModel(backbone=RESNET, gamma_c=1, gamma_d=1, **kw)
        criterion = CfaLoss(**kw)
        # anomalib 2.7's CfaLoss holds radius = torch.ones(1, requires_grad=True) * radius, a non-leaf whose
        # MulBackward node is freed by the first backward: the second loss.backward() raises "Trying to
        # backward through the graph a second time" (torch 2.13). The radius is in no optimiser (never
        # changes), so detaching it keeps the value and every parameter gradient and lets training run.
        criterion.radius = criterion.radius.detach()
        # on_train_start: memory bank = mean descriptor of the training images (not timed)
        g = torch.Generator().manual_seed(seed + 1)
        loader = [types.SimpleNamespace(image=torch.rand(2, 3, size, size, generator=g)) for _ in range(2)]
        model.initialize_centroid(loader)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4, amsgrad=True)

        def loss_fn(out):
            return criterion(out)

        desc = "CfaModel(resnet18, gamma_c=1, gamma_d=1, K=3, J=3) + CfaLoss, AdamW(lr=1e-3, wd=5e-4, amsgrad)"
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return model, loss_fn, opt, desc


def backbone_of(name: str, model):
    """The frozen feature extractor of each anomalib model (what runs under no_grad in its forward)."""
    return {
        "stfpm": lambda: model.teacher_model,
        "reverse_distillation": lambda: model.encoder,
        "fastflow": lambda: model.feature_extractor,
        "csflow": lambda: model.feature_extractor.feature_extractor,  # one scale of the three
        "cfa": lambda: model.feature_extractor,
    }[name]()


# Over the complexity limit: train / inference / backbone timings, each optional; it runs only in
# the torch venv and no test covers it, so it is left whole rather than refactored blind.
def bench_model(name: str, args) -> dict:  # noqa: C901
    import torch

    size = bc.parse_list(args.train_sizes)[0]
    model, loss_fn, opt, desc = build(name, size, args.seed)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    # the frozen extractors run under no_grad (their parameters get no gradient, so the optimiser skips
    # them even where they are in its parameter list: CS-Flow, CFA)
    frozen = {
        id(q)
        for n in ("feature_extractor", "teacher_model", "encoder")
        if hasattr(model, n)
        for q in getattr(model, n).parameters()
    }
    trainable = sum(q.numel() for g in opt.param_groups for q in g["params"] if q.requires_grad and id(q) not in frozen)
    total = bc.count_params(model)

    def images(batch: int, size: int):
        g = torch.Generator().manual_seed(args.seed)
        return torch.rand(batch, 3, size, size, generator=g).contiguous(memory_format=mf)

    def make_train(batch: int, size: int):
        x = images(batch, size)
        model.train()
        if name == "csflow":
            model.feature_extractor.eval()  # as Csflow.__init__ leaves it (the extractor is frozen)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x))
            loss.backward()
            opt.step()
            return loss

        return step

    def make_infer(batch: int, size: int):
        x = images(batch, size)
        model.eval()

        def infer():
            with torch.inference_mode():
                return model(x)  # InferenceBatch(pred_score, anomaly_map)

        return infer

    # check the outputs once (shapes), untimed
    with torch.inference_mode():
        model.eval()
        out = model(images(1, size))
    amap = out.anomaly_map
    print(
        f"[anomalib {name}] {desc}; params total {total:,}, trainable {trainable:,}; "
        f"anomaly_map {tuple(amap.shape)}, score {tuple(out.pred_score.shape)}",
        flush=True,
    )
    extractor = backbone_of(name, model)
    flops = {"note": "per image, batch 1; FlopCounterMode (conv/matmul only, 2*MAC); train = fwd+loss+bwd+opt"}
    if not args.no_flops:
        # counted here, not by run_suite, so that a model FlopCounterMode cannot trace (FastFlow's
        # inference under inference_mode: its module tracker needs grad_fn) still gets timed
        size_ = bc.parse_list(args.train_sizes)[0]
        for mode, maker, skip in (("train", make_train, args.skip_train), ("infer", make_infer, args.skip_infer)):
            if skip:
                continue
            try:
                flops[f"{mode}@{size_}"] = bc.count_flops(maker(1, size_))
            except Exception as e:  # noqa: BLE001 - recorded, the timing goes on
                flops[f"{mode}@{size_}_error"] = f"{type(e).__name__}: {e}"
    suite_args = argparse.Namespace(**{**vars(args), "no_flops": True})
    rows, _ = bc.run_suite(suite_args, f"anomalib {name} (torch)", make_train, make_infer)
    for row in rows:
        f = flops.get(f"{row['mode']}@{row['size']}")
        if f:
            row["gflop_per_image"] = f / 1e9
            row["achieved_gflop_per_s"] = f / 1e9 / row["median_s_per_image"]
    if not args.skip_train:
        # parameters the last train step gave a gradient (anomalib keeps a few unused ones: RD's
        # bottleneck conv4/bn4, CoordConv2d's own nn.Conv2d weight in CFA)
        trainable_with_grad = sum(q.numel() for g in opt.param_groups for q in g["params"] if q.grad is not None)
    else:
        trainable_with_grad = None
    if not args.skip_backbone:
        # the frozen backbone's forward alone (one scale), at the inference batches
        bc.Clean.max_foreign, bc.Clean.wait_timeout_s = args.max_foreign, args.wait_idle
        model.eval()
        for batch in bc.parse_list(args.infer_batches):
            x = images(batch, size)

            def forward(x=x):
                with torch.inference_mode():
                    return extractor(x)

            cinfo: dict = {}
            times = bc.time_fn(forward, args.warmup, args.repeats, cinfo)
            row = {"mode": "backbone", "size": size, "batch": batch, "warmup": args.warmup, "repeats": args.repeats}
            row.update(bc.summarize(times, batch))
            row.update(cinfo)
            rows.append(row)
            print(
                f"[anomalib {name} (torch)] backbone size={size} batch={batch}: median {row['median_s_per_call']:.3f} "
                f"s/call (all: {', '.join(f'{t:.3f}' for t in times)}; max foreign {row['max_foreign_cpu_frac']:.3f})",
                flush=True,
            )
    return {
        "model": f"anomalib {name}",
        "framework": "pytorch",
        "description": desc,
        "params": {"total": total, "trainable": trainable, "trainable_with_grad": trainable_with_grad},
        "anomaly_map_shape": list(amap.shape),
        "flops_per_image": flops,
        "results": rows,
    }


def appended(report: dict, path: str | None) -> dict:
    """--append: the models already in `path` are kept (a model run now replaces its entry); each
    sitting's env is listed under "sittings"."""
    import json

    if not path or not os.path.exists(path):
        return {**report, "sittings": [report["env"]]}
    with open(path) as f:
        old = json.load(f)
    sittings = old.get("sittings", [old["env"]]) + [report["env"]]
    return {**report, "env": old["env"], "sittings": sittings, "models": dict(old.get("models", {}))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bc.add_common_args(p)
    p.set_defaults(train_batches="1,8", infer_sizes="256", infer_batches="1,8", no_flops=False)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--append", action="store_true", help="keep the other models already in --out (a rerun of some)")
    p.add_argument("--skip-backbone", action="store_true", help="skip the rows of the frozen backbone's forward alone")
    args = p.parse_args()
    if bc.parse_list(args.train_sizes) != bc.parse_list(args.infer_sizes) or len(bc.parse_list(args.train_sizes)) != 1:
        raise SystemExit("--train-sizes and --infer-sizes must be the same single size (models are built for it)")

    import anomalib
    import torch
    import torchvision

    bc.set_threads(args.threads)
    patched = patch_out_pretrained_weights()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown model {m!r}; choose from {', '.join(MODELS)}")
    print(f"anomalib {anomalib.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    report = {
        "side": "anomalib",
        "env": bc.env_info({"anomalib": anomalib.__version__, "torchvision": torchvision.__version__}),
        "patched_for_random_weights": patched,
        "models": {},
    }
    report = appended(report, args.out) if args.append else report
    for m in models:
        try:
            report["models"][m] = bench_model(m, args)
        except Exception as e:  # keep the other models' numbers; the JSON says what failed
            traceback.print_exc()
            report["models"][m] = {"model": f"anomalib {m}", "error": f"{type(e).__name__}: {e}"}
        gc.collect()
        bc.write_json(args.out, report)  # after each model, so a long run keeps what it has


if __name__ == "__main__":
    main()
