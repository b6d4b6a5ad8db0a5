"""GQA's image join, the local counterpart of lmms-eval's `gqa_process_docs`.

The built-in task loads the hub table `testdev_balanced_images` (columns id, image), decodes every
image and maps `image = images[imageId]` over the instructions. Same join here, from local parquet
files, with two differences that change nothing in the docs the task sees:
- the encoded image bytes are copied as they are (no decode / re-encode round trip), and only the
  images the instructions reference are kept;
- no worker processes (`num_proc=8` in the built-in) — the copy is cheap.
"""

from __future__ import annotations

import datasets
import pyarrow.parquet as pq


def read_image_table(files: list[str]) -> dict[str, dict]:
    """imageId -> the encoded image struct ({"bytes", "path"}) from the image parquet file(s)."""
    table = {}
    for f in files:
        t = pq.read_table(f, columns=["id", "image"]).to_pydict()
        for image_id, image in zip(t["id"], t["image"]):
            table[image_id] = image
    return table


def join_images(dataset: datasets.Dataset, image_files: list[str]) -> datasets.Dataset:
    images = read_image_table(image_files)
    missing = sorted({i for i in dataset["imageId"] if i not in images})
    if missing:
        raise KeyError(f"GQA: {len(missing)} imageId(s) missing from the image table, e.g. {missing[:3]}")
    column = [images[i] for i in dataset["imageId"]]
    if "image" in dataset.column_names:
        dataset = dataset.remove_columns("image")
    return dataset.add_column("image", column, feature=datasets.Image())
