"""Explanation methods: the registry (`registry`) and one module per family of maps (CAMs, guided
backpropagation, occlusion)."""
