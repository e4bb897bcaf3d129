#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (benchmarks/device/wheels.txt) into .whl/ for
# CPython 3.12 on manylinux x86_64, as /work/.library/device/README.md says, then check that the
# working tree and the wheels stay under the device tool's 64 MiB.
#   bash benchmarks/device/fetch_wheels.sh [--with-anomalib]
# Run it from anywhere (it works in the repository root); .whl/ is ignored through
# .git/info/exclude (this script adds the line once). A package with no binary wheel on PyPI
# (a pure-Python sdist) is built into a wheel here with `pip wheel --no-deps`.
set -euo pipefail
cd "$(dirname "$0")/../.."
groups=(core)
[ "${1:-}" = "--with-anomalib" ] && groups+=(anomalib)
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PY=${PYTHON:-python3}
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  platforms+=(--platform "$p")
done
for pin in $("$PY" benchmarks/device/wheels.py list "${groups[@]}"); do
  name=${pin%%==*}
  file_prefix=$(echo "$name" | tr 'A-Z.-' 'a-z__')
  if ls .whl/ | tr 'A-Z' 'a-z' | grep -q "^${file_prefix}-${pin##*==}-"; then
    continue  # already there
  fi
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d .whl "$pin"; then
    echo "no binary wheel for $pin: building one (pure Python)"
    "$PY" -m pip wheel -q --no-deps -w .whl "$pin"
  fi
done
"$PY" benchmarks/device/wheels.py check --whl .whl
