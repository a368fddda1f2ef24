"""Explanation methods: the registry, then one module per family of maps, each registering its
methods on import (CAMs, guided backpropagation, occlusion; their order is the registry's order).

The registry never imports the methods; importing any module of this package imports them all.
"""
from explainers.methods import cams, guided, occlusion  # noqa: F401  (each registers its methods)
from explainers.methods.registry import (
    ATTENTION,
    METHODS,
    MapMethod,
    Method,
    default_methods,
    help_text,
    method,
    method_names,
    parse_methods,
    register_method,
    split_methods,
    title,
)

__all__ = ["ATTENTION", "METHODS", "MapMethod", "Method", "default_methods", "help_text", "method",
           "method_names", "parse_methods", "register_method", "split_methods", "title"]
