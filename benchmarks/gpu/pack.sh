#!/usr/bin/env bash
# Puts what benchmarks/gpu/checks.sh needs on a lent GPU into .gpu/ (ignored through
# .git/info/exclude, never committed): the data it reads, copied from ../shared/data (the ISBI
# slices are non-commercial: local benchmarks only), and the MONAI wheel of the reference runs.
# About 20 MB. Run it here, in the repository's root, before the device call.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED_DATA:-../shared/data}
PY=${PY:-.venv/bin/python}
mkdir -p .git/info && touch .git/info/exclude
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >>.git/info/exclude
rm -rf .gpu && mkdir -p .gpu/data/dsb2018_train/images .gpu/data/dsb2018_train/masks .gpu/whl
# DSB 2018: the 334 grey 256 x 256 images the mosaics are made of (bench_predict, bench_finetune's index).
"$PY" - "$SHARED/dsb2018_train" .gpu/data/dsb2018_train <<'PY'
import csv, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copy(src / "index_train.csv", dst)
with open(src / "index_train.csv", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["kind"] == "gray_darkbg" and r["height"] == r["width"] == "256"]
for r in rows:
    for part in ("images", "masks"):
        shutil.copy(src / part / f"{r['id']}.tif", dst / part)
print(f"{len(rows)} DSB images")
PY
cp -r "$SHARED/isbi2012_em" "$SHARED/msd_hippocampus_dev" .gpu/data/
MONAI=$("$PY" -c "import monai; print(monai.__version__)")
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl "monai==$MONAI"
du -sh .gpu
