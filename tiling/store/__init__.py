"""The on-disk store that stages share: one module per part, imported here in order.

    names     every path under OUT, its format version and the module that writes it
    stamps    the contract: atomic writes, stamps that let a rerun skip, format versions,
              the record of a store's files that proves it whole
    patches   patches.zarr (tile)           explain   explain.zarr, embeddings.zarr (explain)
    ome       OME-Zarr images and labels    maps      maps.zarr (stitch)
    lesions   the lesion polygons inside maps.zarr (stitch; the viewer draws them)
    records   run.json, audit.json, failure.json

The modules import each other, never this package; it re-exports what the stages use.
Coordinates are level-0 pixels everywhere.
"""
from tiling.store.names import (
    AUDIT,
    AUDIT_CSV,
    CACHE,
    EMBEDDINGS,
    EXPLAIN,
    FAILURE,
    FOCUS_GEOJSON,
    FORMAT_VERSIONS,
    IMPRESSIONS,
    INDEX,
    LOCK,
    MAPS,
    PATCHES,
    REPORT,
    ROW_THUMBNAIL,
    RUN_MANIFEST,
    SUBGROUPS_CSV,
    TILES_GEOJSON,
    slide_dir,
    stage_path,
)
from tiling.store.patches import Artefacts, PatchStore, create_patch_store, open_patch_store, write_patch_records
from tiling.store.stamps import (
    STAMP_KEYS,
    VERSION_KEY,
    atomic_path,
    chained_stamp,
    check_version,
    check_whole,
    config_hash,
    damage,
    discard_damaged,
    file_sha256,
    is_current,
    read_stamp,
    remove_leftovers,
    runtime,
    seal,
    seal_store,
    stamped,
)

__all__ = [
    "AUDIT", "AUDIT_CSV", "CACHE", "EMBEDDINGS", "EXPLAIN", "FAILURE", "FOCUS_GEOJSON", "FORMAT_VERSIONS",
    "IMPRESSIONS", "INDEX", "LOCK", "MAPS", "PATCHES", "REPORT", "ROW_THUMBNAIL", "RUN_MANIFEST", "STAMP_KEYS",
    "SUBGROUPS_CSV", "TILES_GEOJSON", "VERSION_KEY", "Artefacts", "PatchStore", "atomic_path", "chained_stamp",
    "check_version", "check_whole", "config_hash", "create_patch_store", "damage", "discard_damaged", "file_sha256",
    "is_current", "open_patch_store", "read_stamp", "remove_leftovers", "runtime", "seal", "seal_store", "slide_dir",
    "stage_path", "stamped", "write_patch_records",
]
