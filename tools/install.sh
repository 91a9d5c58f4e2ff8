#!/usr/bin/env bash
# Install whatever is missing for cvattn_mm, then verify the result.
#
#   bash tools/install.sh            # venv in ./.venv (created when absent)
#   CVATTN_PYTHON=/path/to/python bash tools/install.sh   # use an existing environment
#
# What it does, each step only when needed:
#   1. a virtual environment in .venv (git-ignored), unless CVATTN_PYTHON names a Python;
#   2. torch 2.14.1 + torchvision 0.29.1, only when no torch is installed (a torch that is
#      already there, e.g. a user's CUDA build, is never replaced);
#   3. mmcv 2.0.1 compiled WITH ops from the PyPI sdist (setuptools<82, no build isolation,
#      -std=c++20 for torch>=2.14 headers). 2.0.1 is the newest mmcv that every package of the
#      stack accepts, mmyolo 0.6.0 included (it asserts mmcv < 2.1.0). The wheel is cached
#      outside the repository in $CVATTN_WHEELHOUSE (default ~/.cache/cvattn_mm/wheels), keyed
#      by the mmcv version, torch version and Python tag, so the ~20 minute compile happens
#      once per machine and torch;
#   4. the OpenMMLab stack, the optional and test requirements, openmim without its harmful
#      dependencies, mmaction2 without its dependencies (the registry-collision test lists its
#      names), and cvattn_mm itself (editable);
#   5. a self-check: mmcv ops load, mmdet/mmseg/mmpretrain/mmyolo import their models,
#      cvattn_mm imports. Any failure stops with the reason.
# A stamp in the environment records the hash of the requirement files, so a second run with
# nothing to do only re-runs the self-check.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MMCV_VERSION=2.0.1
export MMCV_VERSION
TORCH_DEFAULT="torch==2.14.1 torchvision==0.29.1"
WHEELHOUSE_ROOT=${CVATTN_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvattn_mm/wheels}

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[install] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# 1. the Python environment
if [[ -n "${CVATTN_PYTHON:-}" ]]; then
    PY=$CVATTN_PYTHON
    STAMP_DIR=$("$PY" -c 'import sys; print(sys.prefix)')
else
    VENV=$ROOT/.venv
    if [[ ! -x $VENV/bin/python ]]; then
        say "creating virtual environment $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed (install python3-venv)"
    fi
    PY=$VENV/bin/python
    STAMP_DIR=$VENV
fi
PIP=("$PY" -m pip --disable-pip-version-check)
"$PY" -c 'import sys; assert sys.version_info >= (3, 10)' || die "$PY is older than Python 3.10"

verify() {
    "$PY" - <<'EOF'
import importlib
import sys

problems = []
try:
    import torch
    import torchvision  # noqa: F401  (mmpretrain imports it unconditionally)
except Exception as e:  # noqa: BLE001
    problems.append(f'torch/torchvision do not import: {e!r}')
try:
    import mmcv
    from mmcv.ops import nms, roi_align  # noqa: F401  compiled ops
    import mmcv._ext  # noqa: F401
    import os
    if mmcv.__version__ != os.environ['MMCV_VERSION']:
        problems.append(f'mmcv is {mmcv.__version__}, expected {os.environ["MMCV_VERSION"]}')
except Exception as e:  # noqa: BLE001
    problems.append(f'mmcv compiled ops do not load: {e!r}')
for name in ('mmengine', 'mmdet.models', 'mmseg.models', 'mmpretrain.models', 'mmyolo.models',
             'albumentations', 'einops', 'cvattn_mm'):
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        problems.append(f'{name} does not import: {e!r}')
if problems:
    print('\n'.join(problems), file=sys.stderr)
    sys.exit(1)
import mmdet, mmpretrain, mmseg, mmengine, mmyolo  # noqa: E401,E402
print(f'torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__} '
      f'(ops), mmdet {mmdet.__version__}, mmpretrain {mmpretrain.__version__}, '
      f'mmseg {mmseg.__version__}, mmyolo {mmyolo.__version__}')
EOF
}

STAMP=$STAMP_DIR/.cvattn_mm-install-stamp
HASH=$(cat "$ROOT"/requirements/*.txt "$ROOT/tools/install.sh" "$ROOT/setup.py" | sha256sum | cut -c1-16)
if [[ -f $STAMP && "$(cat "$STAMP")" == "$HASH" ]] && verify >/dev/null 2>&1; then
    say "environment up to date ($PY)"
    exit 0
fi

# 2. torch
if "$PY" -c 'import torch' 2>/dev/null; then
    say "keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
    "$PY" -c 'import torchvision' 2>/dev/null \
        || die "torch is installed but torchvision is not: install the torchvision that matches it"
else
    say "installing $TORCH_DEFAULT"
    # shellcheck disable=SC2086
    "${PIP[@]}" install $TORCH_DEFAULT
fi
"${PIP[@]}" install -r "$ROOT/requirements/build.txt"

# 3. mmcv with ops: a wheel built for this torch, from the wheelhouse or compiled once
mmcv_ok() {
    "$PY" -c "import mmcv, mmcv._ext; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null
}
MMCV_WHEEL=()
if mmcv_ok; then
    say "mmcv $MMCV_VERSION with ops already installed"
else
    KEY=$("$PY" -c 'import sys, torch, platform; print(f"torch{torch.__version__}-cp{sys.version_info.major}{sys.version_info.minor}-{platform.machine()}".replace("+", "_"))')
    HOUSE=$WHEELHOUSE_ROOT/mmcv-$MMCV_VERSION-$KEY
    WHEEL=$(ls "$HOUSE"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    if [[ -z $WHEEL ]]; then
        say "compiling mmcv $MMCV_VERSION with ops for $KEY (about 20 minutes on 2 cores, once per machine)"
        BUILD=$(mktemp -d)
        trap 'rm -rf "$BUILD"' EXIT
        "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation -d "$BUILD" "mmcv==$MMCV_VERSION" \
            || die "could not download the mmcv $MMCV_VERSION sdist"
        tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
        # torch >= 2.14 headers need C++20; mmcv 2.0.1 hard-codes -std=c++14 and -std=c++17
        sed -i "s/-std=c++1[47]/-std=c++20/g" "$BUILD/mmcv-$MMCV_VERSION/setup.py"
        MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" wheel --no-build-isolation --no-deps \
            --no-cache-dir -w "$BUILD/dist" "$BUILD/mmcv-$MMCV_VERSION" \
            || die "compiling mmcv failed (see the compiler output above)"
        mkdir -p "$HOUSE"
        cp "$BUILD"/dist/mmcv-*.whl "$HOUSE/"
        WHEEL=$(ls "$HOUSE"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
        say "cached $WHEEL"
    else
        say "using cached $WHEEL"
    fi
    # an mmcv without ops (or built for another torch) must go before the wheel goes in
    "${PIP[@]}" uninstall -y mmcv mmcv-lite >/dev/null 2>&1 || true
    MMCV_WHEEL=("$WHEEL")
fi

# 4. the OpenMMLab stack (mmcv from the wheel above), cvattn_mm and its tools
"${PIP[@]}" install "${MMCV_WHEEL[@]}" -r "$ROOT/requirements/mminstall.txt" \
    -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/optional.txt" \
    -r "$ROOT/requirements/tests.txt" -r "$ROOT/requirements/build.txt"
mmcv_ok || die "mmcv $MMCV_VERSION is installed but its compiled ops do not load"
"${PIP[@]}" install --no-deps openmim==0.3.9
# mmaction2 only for the registry-collision test (tests/test_registry.py enumerates its names);
# without its dependencies, which would add opencv-contrib-python beside opencv-python (both
# own cv2) and decord. Its wheel lacks models/localizers/drn; the test stands in for it.
"${PIP[@]}" install --no-deps mmaction2==1.2.0
# albumentations for mmyolo's YOLOv5/YOLOv8 training pipelines (mmdet.Albu). 1.3.1: from 1.4.10
# on, Compose rejects the other keys of mmdet's results dict ("Key img_shape is not in
# available keys"). Without its dependencies, which would add opencv-python-headless beside
# opencv-python (both own cv2); its real needs are in requirements/mminstall.txt.
"${PIP[@]}" install --no-deps albumentations==1.3.1 qudida==0.0.4
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"

# 5. self-check
say "verifying"
verify || die "the environment is incomplete (see above)"
echo "$HASH" > "$STAMP"
say "done ($PY)"
