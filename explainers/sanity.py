"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

An explanation that explains the model must change when the model does. The layers are
re-initialised top-down and cumulatively: the MIL head first (every module beside the encoder),
then the encoder's stages from the top (its children with parameters, last first). After each
step the maps of every method and the attention are computed again (`BagExplainer`, the same
engine as the explain stage) on a seeded sample of at most `max_patches` patches, for the class
and target (the slide logit or each patch's own) the original maps explain, and compared with
the original maps by Spearman's rank correlation

    ρ = Pearson correlation of the ranks of all map values (all patches' (h, w) maps flattened;
        the attention's N values), scipy.stats.spearmanr; None when either map is constant.

One draw of random weights is one sample of ρ (over 20 seeds the head step's Grad-CAM ρ on the
demo's model ranged from -0.43 to +0.48), so the whole top-down sequence is drawn `draws` times
with different seeds, and each step reports the median ρ and its range over the draws. A method
whose median ρ stays above `max_rho` once the top encoder stage is random (the step after the
head) is insensitive to the model: its maps show the input, not what the model learnt.
Re-initialisation calls each module's `reset_parameters` (PyTorch's default initialisation),
seeded; a parameter owned by a module without one is drawn from N(0, 0.02²).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from explainers.config import SanityConfig
from explainers.engine import BAG_TARGETS, BagExplainer, frozen
from explainers.models.config import ModelConfig
from explainers.models.inputs import check_fits, normalise, resize
from explainers.models.mil import MILModel
from tiling.store import PatchStore

ATTENTION = "attention"


def layers(model: MILModel) -> list[tuple[str, list[nn.Module]]]:
    """The layers to re-initialise, top first: ("head", the modules beside the encoder), then
    ("encoder.<stage>", [stage]) for each encoder stage with parameters, last stage first."""
    head = [m for name, m in model.named_children() if name != "encoder"]
    stages = [(f"encoder.{name}", [m]) for name, m in model.encoder.named_children()
              if any(True for _ in m.parameters())]
    return [("head", head), *reversed(stages)]


@torch.no_grad()
def reinitialise(modules: list[nn.Module], seed: int) -> None:
    """Draw new weights for every parameter of `modules` (module docstring), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in (m for top in modules for m in top.modules()):
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, 0.02)


def sample_reader(store: PatchStore, config: ModelConfig, device: torch.device,
                  index: np.ndarray) -> Callable[[int, int], torch.Tensor]:
    """read(lo, hi): model inputs of the patches index[lo:hi] of `store`."""
    check_fits(store, config)

    def read(lo: int, hi: int) -> torch.Tensor:
        patches = np.stack([store.patches[int(i)] for i in index[lo:hi]])
        return normalise(resize(patches, config.patch), config, device)
    return read


def bag_maps(model: MILModel, target_layer: str, methods: tuple[str, ...], read: Callable[[int, int], torch.Tensor],
             n: int, cls: int, batch: int, target: str = "slide") -> dict[str, np.ndarray]:
    """{"attention": (n,), method: (n, h, w)} of the bag read by `read` for class `cls` of the
    explain stage's `target` ("slide": the slide logit; "instance": each patch's own logit)."""
    explainer = BagExplainer(model, target_layer, methods)

    def batches() -> Iterator[tuple[int, int, torch.Tensor]]:
        for lo in range(0, n, batch):
            yield lo, min(lo + batch, n), read(lo, min(lo + batch, n))

    with frozen(model):
        bag = explainer.forward(batches(), n)
        with torch.no_grad():
            found = {ATTENTION: model.pool(bag.h, cls)[1].double().cpu().numpy()}
        chunks = list(explainer.maps(bag, BAG_TARGETS[target](model, bag.h, cls), batch, read))
    return found | {m: np.concatenate([c[m] for _, _, c in chunks]) for m in methods}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's ρ of two maps' values (flattened); None when either is constant or not finite."""
    a, b = np.ravel(a), np.ravel(b)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or a.min() == a.max() or b.min() == b.max():
        return None
    return float(spearmanr(a, b).statistic)


def randomisation(model: MILModel, target_layer: str, methods: tuple[str, ...],
                  read: Callable[[int, int], torch.Tensor], n: int, cls: int, batch: int,
                  config: SanityConfig, target: str = "slide") -> dict[str, object]:
    """The module docstring's test, on the maps of `target` (`bag_maps`): {"layers": names in
    order, "rho_draws": {method: [[ρ of each draw] per layer]}, "rho": {method: [median ρ per
    layer]}, "rho_range": {method: [[min, max] per layer]} (None where no draw gave a ρ),
    "insensitive": methods whose median ρ > max_rho once the top encoder stage is random,
    "max_rho", "draws", "patches": n}. `model` is left untouched (copies are randomised); draw d
    seeds step i with seed + d·len(layers) + i."""
    original = bag_maps(model, target_layer, methods, read, n, cls, batch, target)
    names = [name for name, _ in layers(model)]
    draws: dict[str, list[list[float | None]]] = {name: [[] for _ in names] for name in original}
    for d in range(config.draws):
        copy_ = copy.deepcopy(model)
        for i, (_, modules) in enumerate(layers(copy_)):
            reinitialise(modules, config.seed + d * len(names) + i)
            random = bag_maps(copy_, target_layer, methods, read, n, cls, batch, target)
            for name in original:
                draws[name][i].append(rank_correlation(original[name], random[name]))
    rho = {name: [_median(step) for step in steps] for name, steps in draws.items()}
    spread = {name: [_range(step) for step in steps] for name, steps in draws.items()}
    top = min(1, len(names) - 1)  # the step that randomised the top encoder stage
    insensitive = [m for m in methods if (r := rho[m][top]) is not None and r > config.max_rho]
    return {"layers": names, "rho_draws": draws, "rho": rho, "rho_range": spread, "insensitive": insensitive,
            "max_rho": config.max_rho, "draws": config.draws, "patches": n}


def _known(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _median(values: list[float | None]) -> float | None:
    known = _known(values)
    return float(np.median(known)) if known else None


def _range(values: list[float | None]) -> list[float] | None:
    known = _known(values)
    return [min(known), max(known)] if known else None
