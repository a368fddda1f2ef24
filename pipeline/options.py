"""Click options shared by several commands, defined once."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

out_dir = click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                       help="Output folder (the store): OUT/slides/<slide_id>/...")
seed = click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
mpp = click.option("--mpp", default=1.0, show_default=True, type=float,
                   help="Target resolution of the patches, micrometres per pixel.")
patch = click.option("--patch", default=224, show_default=True, type=int,
                     help="Patch side in pixels at the target mpp.")
stride = click.option("--stride", default=None, type=int,
                      help="Step between patches in pixels at the target mpp (default: --patch).")
min_tissue = click.option("--min-tissue", default=0.5, show_default=True, type=float,
                          help="Keep patches whose tissue fraction is at least this.")
slide_mpp = click.option("--slide-mpp", default=None, type=float,
                         help="Level-0 µm/px of the slides (archive-wide default). Precedence: the manifest "
                              "column `mpp` > this flag > the file's tags; a file's implausible value "
                              "(outside 0.05-20, or a TIFF's default 72/96/300 dpi) counts as missing.")
drop_artefacts = click.option(
    "--drop-artefacts", default=None, metavar="ink,fold,blank",
    callback=lambda ctx, param, value: None if value is None else tuple(value.split(",")),
    help="Leave out the patches on these artefact kinds at tile time, as a deployment that removes them "
         "would (default: none, tile.drop_artefacts; the audit then tests whether the prediction rests on "
         "each kind). Their dependence cannot be tested, and the report says so.")
lesion_classes = click.option(
    "--lesion-classes", default=None, metavar="C1,C2",
    help="Annotation classes that are lesions (QuPath classification names, ASAP groups; shell patterns, "
         "any case), e.g. Tumor. Default (stitch.lesion_classes): ASAP groups _0, _1, Tumor; every GeoJSON "
         "class but Other, Stroma, Necrosis, Normal, Background, Ignore*, Region*, Immune cells.")
exclude_classes = click.option(
    "--exclude-classes", default=None, metavar="C1,C2",
    help="Annotation classes subtracted from the lesions they overlap (default: stitch.exclude_classes, "
         "_2,exclusion as in CAMELYON16).")
device = click.option("--device", default="auto", show_default=True,
                      type=click.Choice(["auto", "cpu", "cuda"]), help="Where models run.")
workers = click.option("--workers", default=None, type=click.IntRange(min=1),
                       help="Local Dask worker processes (default: run.workers of the config, 2).")
model_dir = click.option("--model", "model_dir", required=True,
                         type=click.Path(exists=True, file_okay=False, path_type=Path),
                         help="Model folder (model.safetensors + config.json), e.g. from `slideaudit train`.")


class MethodsType(click.ParamType):
    """Comma-separated explanation methods -> their names, checked by
    `explainers.methods.registry.parse_methods` (imported on first use, so --help stays fast)."""

    name = "methods"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        from explainers.methods.registry import parse_methods
        from tiling.errors import ConfigError

        try:
            return parse_methods(value, "--methods")
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class MethodsOption(click.Option):
    """`--methods`, whose help ends with the registered methods (read when help is shown)."""

    def __init__(self, *args: Any, context: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from explainers.methods.registry import default_methods, help_text

        record = super().get_help_record(ctx)
        if record is None:
            return None
        default = f" [default: {','.join(default_methods(self.context))}]" if self.context else ""
        return record[0], f"{record[1]}{default} Choices: {help_text()}."


def methods(context: str | None, help: str) -> Callable[[F], F]:
    """The `--methods M1,M2` option of every command that explains (value: a tuple of names, None
    when not given). context: where the registry's defaults then apply ("slides", "images"; shown
    in the help), None where the command takes them from elsewhere (its help says where)."""
    return click.option("--methods", cls=MethodsOption, type=MethodsType(), default=None, context=context,
                        metavar="M1,M2", help=help)


class EncoderName(click.ParamType):
    """A registered encoder's name, checked against the records when the command runs (an
    encoder registered after the CLI was defined counts); a usage error lists the choices."""

    name = "encoder"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from explainers.models.encoders import encoder_names

        if value not in encoder_names():
            self.fail(f"{value!r} is not a registered encoder; choose one of {', '.join(encoder_names())}", param, ctx)
        return str(value)


def encoder(required: bool, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--encoder NAME, a registered encoder (`explainers.models.encoders`: its records, plain data,
    give the choices and their architectures in the help)."""
    from explainers.models.encoders import ENCODERS

    def summary(name: str) -> str:
        record = ENCODERS[name]
        spec = record.spec()
        return f"{name} ({record.library}" + (f", {spec.dim}-d)" if spec else ")")
    choices = ", ".join(summary(name) for name in ENCODERS)
    return click.option("--encoder", required=required, default=None, metavar="NAME", type=EncoderName(),
                        help=f"{help} Choices: {choices}.")


def encoder_weights(required: bool, note: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--encoder-weights PATH, read by `explainers.models.weights` (never unpickled)."""
    return click.option("--encoder-weights", required=required, default=None,
                        type=click.Path(exists=True, path_type=Path),
                        help="The frozen encoder's weights, in its library's layout (torchvision ResNets, timm "
                             "ViTs, transformers snapshots): a .safetensors or state-dict file, or a snapshot "
                             f"folder (model.safetensors, pytorch_model.bin){note}.")
