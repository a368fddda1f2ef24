"""The registry of explanation methods: one record per method, everything else derived from it.

A method is one small class registered with its record; the explain engine
(`explainers.engine.BagExplainer`), `--methods` on every command, explain.zarr, the report
titles, the upload page's choices, help texts and the tests all read `METHODS`:

    >>> @register_method("mycam", "My-CAM", kind="cam", needs=("activations", "gradients"),
    ...                  summary="α_c = max_ij G_cij")
    ... class MyCAM(CAM):
    ...     def weights(self, acts, grads, linear):
    ...         return grads.amax((2, 3), keepdim=True)
    >>> parse_methods("gradcam,mycam")
    ('gradcam', 'mycam')

A-MIL attention is recorded too (kind "attention"): every audit scores it, nobody chooses it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from tiling.errors import ConfigError

KINDS = ("attention", "cam", "input-gradient", "perturbation")
NEEDS = ("activations", "gradients", "patches")
ATTENTION = "attention"


@dataclass(frozen=True)
class Method:
    """name: the key in --methods, explain.zarr and audit.json; title: for reports; kind: one of
    KINDS; needs: what the engine must provide (NEEDS: the target layer's activations, the
    gradients of the target score with respect to them, the patches re-read as model inputs);
    requires: methods computed first and handed over (not stored unless chosen too);
    summary: one line for help texts and the report glossary; interactive: cheap enough for the
    upload page; implementation: the class computing it (None for attention)."""

    name: str
    title: str
    kind: str
    needs: frozenset[str]
    summary: str
    requires: tuple[str, ...] = ()
    interactive: bool = True
    implementation: type | None = None

    @property
    def choosable(self) -> bool:
        return self.implementation is not None


METHODS: dict[str, Method] = {
    ATTENTION: Method(ATTENTION, "A-MIL attention", "attention", frozenset(),
                      "the A-MIL gated-attention weight a_k of each patch (Σ_k a_k = 1)"),
}
C = TypeVar("C", bound=type)


def register_method(name: str, title: str, kind: str, needs: Iterable[str], summary: str,
                    requires: tuple[str, ...] = (), interactive: bool = True) -> Callable[[C], C]:
    """Class decorator: record the class as method `name` (see `Method`); sets `cls.method`."""
    needs = frozenset(needs)
    if kind not in KINDS or not needs <= set(NEEDS):
        raise ValueError(f"method {name!r}: kind must be one of {KINDS} and needs within {NEEDS}")
    missing = [r for r in requires if r not in METHODS]
    if missing:
        raise ValueError(f"method {name!r} requires unregistered methods {missing}; register them first")

    def add(cls: C) -> C:
        record = Method(name, title, kind, needs, summary, tuple(requires), interactive, cls)
        cls.method = record  # type: ignore[attr-defined]
        METHODS[name] = record
        return cls

    return add


def method_names() -> tuple[str, ...]:
    """Every method a user can choose, in registration order."""
    _load()
    return tuple(name for name, m in METHODS.items() if m.choosable)


def method(name: str) -> Method:
    """The record of `name` (attention included); ConfigError listing the choices when unknown."""
    _load()
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(method_names())}")
    return METHODS[name]


def title(name: str) -> str:
    """The display title of method `name`."""
    return method(name).title


def parse_methods(value: str | Iterable[str], key: str = "methods") -> tuple[str, ...]:
    """Method names from "a,b" or a sequence: stripped, duplicates dropped, each one known;
    ConfigError naming `key` and the allowed values otherwise."""
    names = value.split(",") if isinstance(value, str) else list(value)
    chosen = tuple(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))
    unknown = [n for n in chosen if n not in method_names()]
    if unknown or not chosen:
        raise ConfigError(f"{key}: unknown or no methods {unknown}; choose one or more of "
                          f"{', '.join(method_names())}")
    return chosen


def help_text() -> str:
    """One line per method for --help: name: title, summary."""
    _load()
    return "; ".join(f"{m.name} ({m.title})" for m in METHODS.values() if m.choosable)


def _load() -> Any:
    """Import the modules that register the built-in methods (they import this one)."""
    from explainers import cams, guided, occlusion

    return cams, guided, occlusion
