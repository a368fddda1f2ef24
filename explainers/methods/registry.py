"""The registry of explanation methods: one record per method, everything else derived from it.

A method is a record (`declare`: name, title, kind, formula, defaults...) and a class that
computes it (`implements`). The records are plain data, read without torch: `--methods` and its
help, the configs' defaults, explain.zarr, report titles and the upload page's choices all read
`METHODS`; the explain engine (`explainers.engine.BagExplainer`) instantiates `implementation`:

    >>> declare("mycam", "My-CAM", kind="cam", needs=("activations", "gradients"),
    ...         formula="α_c = max_ij G_cij", description="Where the strongest gradients are.")
    >>> @implements("mycam")
    ... class MyCAM(CAM):
    ...     def weights(self, acts, grads, linear):
    ...         return grads.amax((2, 3), keepdim=True)
    >>> parse_methods("gradcam,mycam")
    ('gradcam', 'mycam')

The built-in records are declared in `explainers.methods.catalogue`, their classes in `cams`,
`guided` and `occlusion` (imported by the engine). This module imports none of them. A-MIL
attention is recorded too (kind "attention"): every audit scores it, nobody chooses it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

from tiling.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from explainers.engine import BagExplainer, Chunk

KINDS = ("attention", "cam", "input-gradient", "perturbation")
CONTEXTS = ("slides", "images")  # where a method can be a default: slide audits, single images
NEEDS = ("activations", "gradients", "patches")
ATTENTION = "attention"


@dataclass(frozen=True)
class Method:
    """name: the key in --methods, explain.zarr and audit.json; title: for reports; kind: one of
    KINDS; needs: what the engine must provide (NEEDS: the target layer's activations, the
    gradients of the target score with respect to them, the patches re-read as model inputs);
    requires: methods computed first and handed over (not stored unless chosen too);
    formula: the reference and formula in one line; description: what the map shows, in plain
    words for the reports; interactive: cheap enough for the upload page; defaults: the CONTEXTS
    that run it when no method is chosen."""

    name: str
    title: str
    kind: str
    needs: frozenset[str]
    formula: str
    description: str
    requires: tuple[str, ...] = ()
    interactive: bool = True
    defaults: frozenset[str] = frozenset()

    @property
    def choosable(self) -> bool:
        return self.kind != ATTENTION


METHODS: dict[str, Method] = {
    ATTENTION: Method(ATTENTION, "A-MIL attention", "attention", frozenset(),
                      "Ilse et al. 2018: a_k = softmax_k(w^T (tanh(V h_k) ⊙ sigmoid(U h_k)))",
                      "How much each patch weighs in the slide's prediction (the weights sum to 1)."),
}


class MapMethod:
    """Base of every method class: `explain` gives one map per patch of a chunk of the bag."""

    method: ClassVar[Method]

    def check(self, engine: BagExplainer) -> None:
        """Raise ModelError when the engine's model cannot give this map (default: it can)."""

    def explain(self, chunk: Chunk) -> torch.Tensor:
        """Maps (B, h, w) of the chunk's patches for the chunk's target score."""
        raise NotImplementedError


IMPLEMENTATIONS: dict[str, type[MapMethod]] = {}
C = TypeVar("C", bound=type[MapMethod])


def declare(name: str, title: str, kind: str, needs: Iterable[str], formula: str, description: str,
            requires: tuple[str, ...] = (), interactive: bool = True, defaults: Iterable[str] = ()) -> Method:
    """Record method `name` (see `Method`); ValueError for an unknown kind, need or context, or a
    required method not declared before it."""
    needs, defaults = frozenset(needs), frozenset(defaults)
    if kind not in KINDS[1:] or not needs <= set(NEEDS) or not defaults <= set(CONTEXTS):
        raise ValueError(f"method {name!r}: kind must be one of {KINDS[1:]}, needs within {NEEDS}, "
                         f"defaults within {CONTEXTS}")
    missing = [r for r in requires if r not in METHODS]
    if missing:
        raise ValueError(f"method {name!r} requires undeclared methods {missing}; declare them first")
    METHODS[name] = Method(name, title, kind, needs, formula, description, tuple(requires), interactive, defaults)
    return METHODS[name]


def implements(name: str) -> Callable[[C], C]:
    """Class decorator: the class computes declared method `name`; sets `cls.method`."""
    if name not in METHODS or not METHODS[name].choosable:
        raise ValueError(f"implements({name!r}): declare the method first")

    def add(cls: C) -> C:
        cls.method = METHODS[name]
        IMPLEMENTATIONS[name] = cls
        return cls

    return add


def implementation(name: str) -> type[MapMethod]:
    """The class computing method `name` (the built-ins' modules are imported by the engine)."""
    if name not in IMPLEMENTATIONS:
        raise ConfigError(f"method {name!r} has no implementation loaded; import the module that defines it")
    return IMPLEMENTATIONS[name]


def method_names() -> tuple[str, ...]:
    """Every method a user can choose, by kind (KINDS order), then in registration order."""
    chosen = [m for m in METHODS.values() if m.choosable]
    return tuple(m.name for m in sorted(chosen, key=lambda m: KINDS.index(m.kind)))


def default_methods(context: str) -> tuple[str, ...]:
    """The methods run in `context` (one of CONTEXTS) when none is chosen, in `method_names` order."""
    return tuple(name for name in method_names() if context in METHODS[name].defaults)


def method(name: str) -> Method:
    """The record of `name` (attention included); ConfigError listing the choices when unknown."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(method_names())}")
    return METHODS[name]


def title(name: str) -> str:
    """The display title of method `name`."""
    return method(name).title


def split_methods(value: str | Iterable[str]) -> tuple[str, ...]:
    """Method names from "a,b" or a sequence: stripped, empty ones and duplicates dropped, not
    checked against the registry (`parse_methods`)."""
    names = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))


def parse_methods(value: str | Iterable[str], key: str = "methods", allow_empty: bool = False) -> tuple[str, ...]:
    """`split_methods`, each one known, at least one unless `allow_empty`; ConfigError naming
    `key` and the allowed values otherwise."""
    chosen = split_methods(value)
    unknown = [n for n in chosen if n not in method_names()]
    if unknown or not (chosen or allow_empty):
        raise ConfigError(f"{key}: unknown or no methods {unknown}; choose one or more of "
                          f"{', '.join(method_names())}")
    return chosen


def help_text() -> str:
    """The choosable methods for --help: "name (title), ..."."""
    return ", ".join(f"{name} ({METHODS[name].title})" for name in method_names())

