"""The sample-slide generator: pyramidal tiled JPEG TIFFs with tissue, lesions, pen ink and folds,
their annotations (QuPath GeoJSON, ASAP XML) and a manifest; the data of CI and the demo."""
