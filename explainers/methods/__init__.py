"""Explanation methods: the registry, the built-in methods' records (`catalogue`, plain data) and
one module per family of classes computing them (CAMs, guided backpropagation, occlusion).

Importing the package declares the built-in records (no torch); `explainers.engine` imports the
classes. The registry imports neither.
"""
from explainers.methods import catalogue  # noqa: F401  (declares the built-in methods)
