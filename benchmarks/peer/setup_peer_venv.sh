#!/usr/bin/env bash
# Build the peer venv used by the benchmarks in this folder (idempotent).
#   bash benchmarks/peer/setup_peer_venv.sh [/tmp/peer]
# torch 2.13.0+cpu: on the machines these benchmarks ran on, pip's configuration pointed at a
# local wheel directory of CPU builds; elsewhere install the CPU wheel from PyTorch's index.
# anomalib 2.7.0 pulls torchvision 0.28.0, whose only wheel here is the CUDA build (+cu130);
# its C extension cannot load next to torch+cpu, and `import torchvision` then dies in
# torchvision/_meta_registrations.py ("operator torchvision::nms does not exist").  DRAEM
# uses no torchvision op, so we patch torchvision/__init__.py to skip those registrations.
set -euo pipefail
VENV=${1:-/tmp/peer}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q anomalib==2.7.0 torch==2.13.0
"$VENV/bin/python" - <<'EOF'
import importlib.util, pathlib
p = pathlib.Path(importlib.util.find_spec("torchvision").origin)
s = p.read_text()
old = """from torchvision import (
    _autograd_registrations,
    _meta_registrations,
    datasets,"""
new = """# PEER-BENCH PATCH: PyPI torchvision wheel is CUDA-linked; with torch+cpu its _C
# extension cannot load, so skip the fake/meta registrations of its custom ops.
try:
    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401
except RuntimeError:
    pass
from torchvision import (
    datasets,"""
if "PEER-BENCH PATCH" in s:
    print("torchvision already patched")
elif old in s:
    p.write_text(s.replace(old, new)); print("patched", p)
else:
    print("torchvision __init__ layout differs; patch not applied (check `import torchvision`)")
EOF
"$VENV/bin/python" -W ignore -c "import torch, torchvision, anomalib; from anomalib.models.image.draem.torch_model import DraemModel; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'anomalib', anomalib.__version__)"
