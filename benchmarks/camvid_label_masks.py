"""The 'supervised saliency' analogue on CamVid: masks of the object classes of the TRAIN labels.

    python benchmarks/camvid_label_masks.py --data ../shared/data/camvid-trainval.tar.gz --out runs/mc/masks_labels

A pixel is salient when its train label is pole, sign/symbol, fence, car, pedestrian or bicyclist
(CamVid indices 2, 6, 7, 8, 9, 10); then the paper's post-processing
(``selfsup.data.masks.postprocess``). Only the train split's labels are read (never val).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from selfsup.data.masks import postprocess, write_mask
from selfsup.data.segmentation import open_segmentation

OBJECTS = (2, 6, 7, 8, 9, 10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    ds = open_segmentation(args.data)
    out, kept, skipped = Path(args.out), 0, []
    for labels, name in zip(ds.train.labels.numpy(), ds.train.files, strict=True):
        result = postprocess(np.isin(labels, OBJECTS).astype(np.float32))
        if result.kept:
            write_mask(out / (os.path.splitext(name)[0] + ".png"), result.mask)
            kept += 1
        else:
            skipped.append(name)
    report = {"classes": [ds.classes[c] for c in OBJECTS], "written": kept, "skipped": len(skipped)}
    (out / "saliency.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
