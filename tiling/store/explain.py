"""explain.zarr: what the model says about a slide's patches, written by the explain stage
(zarr v3 group; N patches in patches.zarr order, C classes).

    attention        (N,) float32 A-MIL attention of the branch that explains target_class
                     (attrs `attention_branch`: 0 but for multi-branch heads such as CLAM_MB), summing to 1
    slide_logits     (C,) float32
    instance_logits  (N, C) float32 each patch's own logits
    embeddings       (N, D) float32 the encoder's embeddings h (`explainers.embeddings`), reused by a
                     later explain of the same patches with the same encoder (attrs `encoder_stamp`)
    <method>         (N, h, w) float32 raw (unnormalised) values of each method of attrs
                     `methods`: on the target layer's grid (gradcam, gradcampp, hirescam, cam),
                     at the model's input size (guided_backprop, guided_gradcam) or on the
                     occlusion grid (occlusion)
    attrs            the stamp (config_hash, source_sha256), classes, head, target,
                     target_class, methods (may be empty: attention and logits only), mil (the head),
                     attention_branch, model ({name, sha256, config}), encoder_stamp (what the
                     embeddings were computed from), files and sealed_ns (the record of its
                     files, `tiling.store.stamps.seal`), format_version (FORMAT_VERSION)

embeddings.zarr (EMBEDDINGS, beside patches.zarr): the same `embeddings` array and the attrs
`encoder_stamp` and `format_version` alone; `slideaudit train --encoder` keeps them there.
Version 2 added `embeddings` and `encoder_stamp`; version 3 the record of its files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tiling.errors import StoreError
from tiling.store.names import EXPLAIN, FORMAT_VERSIONS
from tiling.store.patches import PatchStore
from tiling.store.stamps import VERSION_KEY, atomic_path, check_version, check_whole, damage, seal

FORMAT_VERSION = FORMAT_VERSIONS[EXPLAIN]  # embeddings.zarr is written in the same format


class ExplainWriter:
    """Writes an explain.zarr at `path` (a temporary name from atomic_path): whole arrays with
    `array`, the per-method maps batch by batch with `maps`, and the attrs last with `finish`.
    Arrays are chunked by `batch` patches."""

    def __init__(self, path: Path, n: int, batch: int) -> None:
        self.path = Path(path)
        self.group = zarr.open_group(path, mode="w", zarr_format=3)
        self.n, self.batch = n, batch
        self._maps: dict[str, zarr.Array] = {}

    def array(self, name: str, values: np.ndarray) -> None:
        """Write one whole array (attention, slide_logits, instance_logits, embeddings) as float32."""
        data = np.asarray(values, np.float32)
        self.group.create_array(name, data=data, chunks=(min(self.batch, data.shape[0]), *data.shape[1:]))

    def maps(self, lo: int, hi: int, maps: dict[str, np.ndarray]) -> None:
        """Write patches lo..hi-1 of each method's (hi - lo, h, w) maps."""
        for name, values in maps.items():
            if name not in self._maps:
                self._maps[name] = self.group.create_array(
                    name, shape=(self.n, *values.shape[1:]), dtype="float32",
                    chunks=(self.batch, *values.shape[1:]))
            self._maps[name][lo:hi] = values

    def finish(self, attrs: dict[str, Any]) -> None:
        """Write the attrs (the module docstring's), the record of the files (`seal`) and the
        format version."""
        self.group.update_attributes({**attrs, **seal(self.path), VERSION_KEY: FORMAT_VERSION})


def write_embeddings(path: Path, h: np.ndarray, encoder_stamp: str) -> Path:
    """Write embeddings h (N, D) and their `encoder_stamp` as an embeddings.zarr at `path`, atomically."""
    with atomic_path(path) as tmp:
        writer = ExplainWriter(tmp, h.shape[0], max(1, min(h.shape[0], 4096)))
        writer.array("embeddings", h)
        writer.finish({"encoder_stamp": encoder_stamp})
    return path


def read_embeddings(path: Path, encoder_stamp: str, n: int) -> np.ndarray | None:
    """The (n, D) float32 embeddings kept in the explain.zarr or embeddings.zarr at `path`, or None
    when there are none, or they were made from another encoder or patches (`encoder_stamp`), for
    another number of patches, in another format version, or the store is damaged (`damage`)."""
    try:
        group = zarr.open_group(path, mode="r")
        if (group.attrs.get("encoder_stamp") != encoder_stamp or group.attrs.get(VERSION_KEY) != FORMAT_VERSION
                or group["embeddings"].shape[0] != n or damage(path, group.attrs)):
            return None
        return np.asarray(group["embeddings"][:], np.float32)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return None


def open_explain_store(path: Path, store: PatchStore) -> zarr.Group:
    """explain.zarr opened read-only, checked against its patch store (one attention value
    per patch, an array per listed method), its format version and its files (`check_whole`)."""
    try:
        group = zarr.open_group(path, mode="r")
        check_version(path, group.attrs, FORMAT_VERSION, "rerun the explain stage on the slide")
        check_whole(path, group.attrs, "rerun the explain stage (or `run`) on the slide")
        n = group["attention"].shape[0]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{path}: no complete explain store here ({exc}); run the explain "
                         "stage on the slide first") from exc
    if n != len(store):
        raise StoreError(f"{path}: {n} attention values for {len(store)} patches in "
                         f"{store.path}; rerun the explain stage")
    missing = [m for m in group.attrs.get("methods", []) if m not in group]
    if missing:
        raise StoreError(f"{path}: methods {missing} are listed but have no array; rerun explain")
    return group
