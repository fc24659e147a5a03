"""What a user asks for, validated where it enters: `SurfaceConfig` (one surface to compute) and `PlotConfig` (how
surface files become figure files), and the vocabularies of their enumerated options. Their fields are the flags
of `landscape.plot1d` and `landscape.plot2d` (landscape.base.flags derives the flags from them). No torch here: a
re-plot parses these flags without loading it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import KW_ONLY, dataclass
from typing import Any

from landscape.base.errors import ConfigError, UnknownNameError
from landscape.base.flags import json_object, option
from landscape.base.grid import parse_range

DEVICES = ("auto", "cpu", "cuda")  # auto: cuda:LOCAL_RANK when CUDA is there, else the CPU
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, fp32 on a CPU
DIR_TYPES = ("weights", "states")
NORMS = ("filter", "layer", "weight", "none")
IGNORES = ("biasbn", "none")
SPLITS = ("train", "test")
# the metrics a request may name, checked without torch; landscape.runtime.metrics builds each (a test keeps them one)
METRICS = ("cross_entropy", "mse", "causal_lm", "masked_lm", "next_token")

OUT = "landscape_out"  # where surfaces and figures go unless --out says
AXIS = "-1:1:51"  # a direction's default axis: the paper's 51 points over [-1, 1]
INTERPOLATION_AXIS = "-0.5:1.5:41"  # theta_A at 0, theta_B at 1, and half the way again beyond each
HESSIAN = "hessian"  # --directions hessian: the top eigenvectors of the Hessian at the centre
# the curvature operators (landscape.curvature.operators registers them, in this order): --curvature chooses one, and
# --directions NAME takes the top eigenvectors of that one
CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher")
CURVATURE_LABELS = {"hessian": "Hessian", "ggn": "GGN", "fisher": "Fisher", "empirical_fisher": "empirical Fisher"}

# torch.compile by default (compile=None) when the eager work ahead of one process is at least this long. Measured on
# this project's 2-core CPU: compiling ResNet-56 takes 22 s (20-45 s per input shape for the conv nets) and cuts its
# point from 1.49 to 1.05 s (-30%; ResNet-20: -37%); on an H100, 20-90 s of autotuning buys 1.4x (fp32) to 2.7x
# (bf16). At -30% the compile is paid back after ~70 s of eager work; 120 s leaves room for a slower compile.
COMPILE_AFTER_S = 120.0

# The sharpness table's default measures (their registry: landscape.pipelines.measure_registry): a minute or two on
# a ResNet-18 with 128 samples on 2 CPU cores (the README has the costs); the others are asked for by name.
DEFAULT_MEASURES = ("lambda_max", "trace", "adaptive", "width")
WIDTH_AXIS = "-1:1:21"  # the widths' first axis: widened or narrowed per curve until the width is one


def check_choice(value: object, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} {value!r} is not one of: {', '.join(choices)}")


def check_file_stem(name: str, flag: str) -> None:
    """A name that is a file stem inside the output folder: no path separator, not empty, '.' or '..'."""
    seps = [c for c in ("/", "\\", os.sep, os.altsep) if c]
    if not name or name in (".", "..") or any(c in name for c in seps) or "\0" in name:
        raise ConfigError(f"{flag} {name!r} must be a plain file name (no '/', not '..'); choose the folder with "
                          "--out")


def check_points_per_pass(points_per_pass: int, compile: bool | None) -> None:
    if points_per_pass < 1:
        raise ConfigError(f"--points-per-pass must be >= 1, got {points_per_pass}")
    if compile is True and points_per_pass > 1:
        raise ConfigError("--compile and --points-per-pass > 1 do not combine; pick one")


def import_object(spec: str, flag: str) -> Any:
    """The object a user names as `package.module:attribute`, imported; a one-line error naming what failed."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownNameError(f"{flag} {spec!r}: cannot import {module_name!r} ({exc}); check the module path and "
                               "that its folder is on PYTHONPATH") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownNameError(f"{flag} {spec!r}: {module_name!r} has no {attr!r}; check the name after ':'")
        obj = getattr(obj, part)
    return obj


def check_axis(spec: str, flag: str) -> None:
    """MIN:MAX:NUM, or auto / auto:NUM (resolved when computing)."""
    if spec.split(":")[0] != "auto":
        parse_range(spec, flag)
        return
    num = spec.split(":")[1:]
    if len(num) > 1 or (num and not (num[0].isdigit() and int(num[0]) >= 2)):
        raise ConfigError(f"{flag} {spec!r}: write auto or auto:NUM with NUM >= 2 points")


def run_tag(path: str) -> str:
    """A readable, collision-resistant name for a checkpoint: its folder and file stem (runs/a/last.pt -> a_last)."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{parent}_{stem}" if parent else stem


# The pieces of a surface request: each command's flags are the pieces it takes (PIECES in its module),
# and SurfaceConfig, the request every pipeline reads, is made of all of them (stored flat, as 0.8 stored it).
@dataclass(frozen=True)
class Checkpoints:
    """What the surface is around: the checkpoint, and a second one or the run's earlier ones (set by a command's
    positionals, not by flags)."""

    checkpoint: str
    _: KW_ONLY  # the fields below are keyword-only
    target: str | None = None  # a second checkpoint: d1 = theta_B - theta_A, x runs along the interpolation
    trajectory: tuple[str, ...] = ()  # earlier checkpoints of the run that ended at `checkpoint`, in order: PCA plane


@dataclass(frozen=True, kw_only=True)
class ModelFlags:
    """How the model is built and its weights found, for a weights file of the user's model."""

    model: str | None = option(None, "build the model: a registered name or package.module:function (e.g. "
                               "torchvision.models:resnet18); the weights file is then a state dict, plain or under "
                               "a key", metavar="FN", group="your own code")
    model_kwargs: dict[str, Any] = option(help="JSON keyword arguments of --model", type=json_object,
                                          default_factory=dict, metavar="JSON", group="your own code")
    strip_prefix: str | None = option(None, "the prefix under which the weights file holds the model's tensors "
                                      "(e.g. 'model.' of a LightningModule; default: found when exactly one prefix "
                                      "holds them all)", metavar="PREFIX", group="your own code")
    ema: bool = option(False, "load the averaged model (model_ema) of a torchvision-references checkpoint",
                       group="your own code")


@dataclass(frozen=True, kw_only=True)
class UserDataFlags:
    """The user's own data and loss, instead of the checkpoint's dataset and metric."""

    data: str | None = option(None, "package.module:function returning a DataLoader or iterable of batches, or a "
                              "dict of them by split name", metavar="FN", group="your own code")
    data_kwargs: dict[str, Any] = option(help="JSON keyword arguments of --data", type=json_object,
                                         default_factory=dict, metavar="JSON", group="your own code")
    max_batches: int | None = option(None, "evaluate the first N batches of --data at every point", metavar="N",
                                     group="your own code")
    criterion: str | None = option(None, "a loss as written: package.module:function called as fn(outputs, "
                                   "targets) -> the batch's mean, or a loss class such as torch.nn:CrossEntropyLoss "
                                   "(summed with reduction='sum')", metavar="FN", group="your own code")
    criterion_kwargs: dict[str, Any] = option(help="JSON keyword arguments of --criterion (e.g. "
                                              "'{\"label_smoothing\": 0.1}')", type=json_object,
                                              default_factory=dict, metavar="JSON", group="your own code")
    loss_name: str | None = option(None, "which of the metric's sums is the loss that curvature, widths, auto axes "
                                   "and --loss-max use (default: 'loss', else the one sum ending in 'loss', else "
                                   "the first)", metavar="NAME", group="your own code")


@dataclass(frozen=True, kw_only=True)
class EvalDataFlags:
    """What is measured at each point and on how much data."""

    samples: int | None = option(None, "a fixed subset of N samples per split (default: all)", metavar="N",
                                 group="evaluation")
    metric: str | None = option(None, f"what to map: {', '.join(METRICS)}, or package.module:function "
                                "(see runtime.metrics) (default: the dataset's own: next_token for a language "
                                "corpus, else cross_entropy)", group="evaluation")
    eval_batch_size: int | None = option(None, "samples per forward pass (default: 256 on a CPU, 1024 on CUDA)",
                                         metavar="N", group="evaluation")
    data_dir: str | None = option(None, "folder of torchvision datasets (default: $LANDSCAPE_DATA or ./data)",
                                  metavar="DIR", group="evaluation")
    download: bool = option(False, "let torchvision download a missing dataset", group="evaluation")


@dataclass(frozen=True, kw_only=True)
class SplitsFlags:
    """Which data splits are evaluated."""

    splits: tuple[str, ...] = option(("train", "test"), "data splits to evaluate (landscape.sharpness measures the "
                                     "first one given)", choices=SPLITS, group="evaluation")


@dataclass(frozen=True, kw_only=True)
class BatchNormFlags:
    """BatchNorm's running statistics re-estimated at every point."""

    bn_recalibrate: int | None = option(None, "re-estimate BatchNorm's running statistics at every point from N "
                                        "training batches (train mode, no gradient), then evaluate in eval mode",
                                        metavar="N", group="evaluation")


@dataclass(frozen=True, kw_only=True)
class DeviceFlags:
    """Where it runs, and whether it shows a progress bar."""

    device: str = option("auto", "auto: cuda:LOCAL_RANK when CUDA is there, else the CPU", choices=DEVICES,
                         group="evaluation")
    progress: bool = option(True, "no progress bar", flag="--no-progress", group="evaluation")


@dataclass(frozen=True, kw_only=True)
class EvalRunFlags:
    """How the points are evaluated and flushed."""

    precision: str = option("fp32", "fp32, or bf16 autocast (faster on GPUs); auto: bf16 on CUDA, fp32 on a CPU",
                            choices=PRECISIONS, group="evaluation")
    channels_last: bool | None = None  # None: channels_last for image batches
    flush_seconds: float = option(2.0, "about how much work may be in flight between two flushes of the file",
                                  metavar="S", group="evaluation")


@dataclass(frozen=True, kw_only=True)
class SpeedFlags:
    """Compiling the model, and several points per forward pass."""

    compile: bool | None = option(None, "torch.compile the model (autotuned kernels on CUDA), or not; by default "
                                  f"when the points left would take each process at least {COMPILE_AFTER_S:.0f} s "
                                  "eagerly (timed at the centre): compiling takes 20-90 s and saved 30-60%% of a "
                                  "conv net's point where measured", group="evaluation")
    points_per_pass: int = option(1, "evaluate K grid points per forward pass with torch.func.vmap; pays for "
                                  "small models on a GPU, not on a CPU", metavar="K", group="evaluation")


@dataclass(frozen=True, kw_only=True)
class SubsetFlags:
    """Which tensors the directions move."""

    params: tuple[str, ...] = option((), "move only the tensors whose names match these globs (e.g. 'layer4.*')",
                                     metavar="GLOB", group="directions")
    trainable_only: bool = option(False, "move only parameters with requires_grad (adapters, LoRA)",
                                  group="directions")
    ignore: str = option("biasbn", "biasbn: zero the directions on 1-D tensors (biases, BatchNorm); none: keep "
                         "them", choices=IGNORES, group="directions")


@dataclass(frozen=True, kw_only=True)
class RandomFlags:
    """How random directions are drawn and normalized."""

    norm: str = option("filter", "rescale each random direction per filter, per layer, elementwise by the "
                       "weights, or not at all", choices=NORMS, group="directions")
    seed: int = option(0, "seed of the random directions", group="directions")


@dataclass(frozen=True, kw_only=True)
class DirectionFlags:
    """Directions read from a file (or the Hessian's), what they move, and their orthogonality."""

    directions_file: str | None = option(None, "reuse the directions of this surface or direction file (.h5); "
                                         "'hessian' (or ggn, fisher, empirical_fisher): the top eigenvectors of "
                                         "that curvature of the training loss at the centre, scaled to the norm of "
                                         "a filter-normalized direction", flag="--directions",
                                         metavar="FILE|hessian|ggn", group="directions")
    dir_type: str | None = option(None, "move the parameters only (weights), or also BatchNorm's running statistics "
                                  "(states) (default: states along an interpolation, else weights)",
                                  choices=DIR_TYPES, group="directions")
    orthogonal: bool = option(False, "make d2 orthogonal to d1 (after normalization)", group="directions")


@dataclass(frozen=True, kw_only=True)
class PlaneFlags:
    """The plane through three checkpoints."""

    plane: tuple[str, ...] = option((), "B C: the plane through the checkpoint A (at 0,0), B (at 1,0) and C "
                                    "(beta 1, alpha where it projects on A->B); 2D only", metavar="CKPT",
                                    group="directions")
    edges: bool = option(False, "with --plane: also the 1D curves along A->B, A->C and B->C", group="directions")


@dataclass(frozen=True, kw_only=True)
class AlignFlags:
    """Permutation alignment of the other checkpoints toward the first."""

    align: bool = option(False, "permute the hidden units of the other checkpoints (B of an interpolation, B and C "
                         "of a plane) toward A's by weight matching first (Ainsworth et al. 2023); their function "
                         "is unchanged", group="alignment")
    align_spec: str | None = option(None, "the permutation spec of a model landscape does not know: FILE.json or "
                                    "package.module:function(model) returning {tensor name: [permutation name or "
                                    "null, per axis]} (README: Aligning your own model)", metavar="SPEC",
                                    group="alignment")


@dataclass(frozen=True, kw_only=True)
class XAxisFlags:
    """The alpha axis."""

    x: str | None = option(None, f"alpha axis MIN:MAX:NUM, or auto[:NUM] (see --auto-rise) (default: {AXIS}, "
                           f"{INTERPOLATION_AXIS} along an interpolation, 41 points over a plane's or a trajectory's "
                           "checkpoints)", metavar="MIN:MAX:NUM", group="grid")


@dataclass(frozen=True, kw_only=True)
class YAxisFlags:
    """The beta axis: a 2D surface."""

    y: str | None = option(None, "beta axis MIN:MAX:NUM, or auto[:NUM]", metavar="MIN:MAX:NUM",
                           group="grid")  # None: a 1D curve


@dataclass(frozen=True, kw_only=True)
class AutoRiseFlags:
    """How far an auto axis reaches."""

    auto_rise: float = option(1.0, "an auto axis spans +-t, t where the loss first rises this much above the centre "
                              "along its direction (either side)", metavar="DL", group="grid")


@dataclass(frozen=True, kw_only=True)
class PlanePointsFlags:
    """The points of a plane's or a trajectory's axes found from its checkpoints."""

    plane_points: int = option(41, "points per axis of a plane or trajectory whose --x/--y are not given (they "
                               "then cover its checkpoints with a quarter-span margin)", metavar="NUM", group="grid")


@dataclass(frozen=True, kw_only=True)
class OutputFlags:
    """Where the files go and what they are called."""

    out: str = option(None, f"folder for the surface files, tables and figures (default: {OUT}); a re-plot of a .h5 "
                      "writes its figures beside it unless --out or --name is given", metavar="DIR", group="output")
    name: str | None = option(None, "file stem (default: from the checkpoint's folder and name)", group="output")

# What every command that evaluates a model takes: the model and its data, where it runs and where its files go
EVALUATION_PIECES = (ModelFlags, UserDataFlags, EvalDataFlags, DeviceFlags, OutputFlags)
SURFACE_PIECES = (Checkpoints, ModelFlags, UserDataFlags, EvalDataFlags,
                  SplitsFlags, BatchNormFlags, DeviceFlags, EvalRunFlags,
                  SpeedFlags, SubsetFlags, RandomFlags, DirectionFlags,
                  PlaneFlags, AlignFlags, XAxisFlags, YAxisFlags,
                  AutoRiseFlags, PlanePointsFlags, OutputFlags)


# A dataclass takes the last base's fields first: the bases are listed in the reverse of SURFACE_PIECES.
@dataclass(frozen=True)
class SurfaceConfig(OutputFlags, PlanePointsFlags, AutoRiseFlags, YAxisFlags, XAxisFlags, AlignFlags, PlaneFlags,
                  DirectionFlags, RandomFlags, SubsetFlags, SpeedFlags, EvalRunFlags, DeviceFlags, BatchNormFlags,
                  SplitsFlags, EvalDataFlags, UserDataFlags, ModelFlags, Checkpoints):
    """One surface around a checkpoint: `pipelines.from_checkpoint.run_surface` computes it, and every field with a flag
    is a flag of plot1d/plot2d under the same name. Made of the pieces above (a command takes the flags of those it
    uses). Defaults that depend on the request (the x axis and the direction type of an interpolation, the output
    folder) are resolved here, so Python and the CLI make the same surface."""

    def __post_init__(self) -> None:
        resolve = object.__setattr__  # frozen: the resolved defaults are set once, here
        resolve(self, "out", self.out or OUT)  # None: not given (a re-plot then writes beside its .h5)
        if not (self.plane or self.trajectory):  # those axes are found from where the checkpoints sit (runner)
            resolve(self, "x", self.x or (INTERPOLATION_AXIS if self.target else AXIS))
        resolve(self, "dir_type", self.dir_type or ("states" if self.target or self.plane else "weights"))
        self._check_plane()
        for flag, axis in [("--x", self.x), ("--y", self.y)]:
            if axis is not None:
                check_axis(axis, flag)
        if self.plane_points < 2:
            raise ConfigError(f"--plane-points must be >= 2, got {self.plane_points}")
        if not self.auto_rise > 0:
            raise ConfigError(f"--auto-rise must be > 0, got {self.auto_rise}")
        for value, choices, flag in [(self.dir_type, DIR_TYPES, "--dir-type"), (self.norm, NORMS, "--norm"),
                                     (self.ignore, IGNORES, "--ignore"),
                                     (self.precision, PRECISIONS, "--precision"), (self.device, DEVICES, "--device")]:
            check_choice(value, choices, flag)
        if not self.splits:
            raise ConfigError("--splits needs at least one of: train, test")
        for split in self.splits:
            check_choice(split, SPLITS, "--splits")
        if self.metric is not None and self.metric not in METRICS and ":" not in self.metric:
            raise ConfigError(f"--metric {self.metric!r} is not one of: {', '.join(METRICS)}, nor "
                              "package.module:function")
        if self.criterion is not None and self.metric is not None:
            raise ConfigError("--metric and --criterion both say what to measure; give one")
        if self.criterion is not None and ":" not in self.criterion:
            raise ConfigError(f"--criterion {self.criterion!r}: write package.module:name (e.g. "
                              "torch.nn:CrossEntropyLoss)")
        if self.criterion_kwargs and self.criterion is None:
            raise ConfigError("--criterion-kwargs needs --criterion")
        if self.model and not self.data:
            raise ConfigError("--model needs --data: a package.module:function returning your DataLoader")
        for value, flag in [(self.samples, "--samples"), (self.eval_batch_size, "--eval-batch-size"),
                            (self.max_batches, "--max-batches"), (self.bn_recalibrate, "--bn-recalibrate")]:
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if self.directions_file in CURVATURES and self.dir_type != "weights":
            raise ConfigError(f"--directions {self.directions_file} moves parameters only; leave out --dir-type "
                              "states")
        if self.align_spec and not self.align:
            raise ConfigError("--align-spec says how to align; add --align")
        if self.align and not (self.target or self.plane):
            raise ConfigError("--align aligns a second checkpoint to the first; give two checkpoints or --plane B C")
        if self.directions_file and self.target:
            raise ConfigError("--directions and a second checkpoint both set the first direction; give one")
        check_points_per_pass(self.points_per_pass, self.compile)
        if self.name is not None:
            check_file_stem(self.name, "--name")
        if not self.flush_seconds >= 0:
            raise ConfigError(f"--flush-seconds must be >= 0, got {self.flush_seconds}")

    def _check_plane(self) -> None:
        if self.trajectory and (self.plane or self.target or self.directions_file or self.dir_type != "weights"):
            raise ConfigError("a trajectory sets both directions (its principal components) and moves parameters "
                              "only; leave out --plane, a second checkpoint, --directions and --dir-type")
        if self.edges and not self.plane:
            raise ConfigError("--edges draws the edges of a --plane; give --plane B C too")
        if not self.plane:
            return
        if len(self.plane) != 2:
            raise ConfigError(f"--plane takes two checkpoints (B and C), got {len(self.plane)}")
        if self.target or self.directions_file:
            raise ConfigError("--plane sets both directions; leave out the second checkpoint and --directions")

    @property
    def kind(self) -> str:
        if self.plane or self.trajectory:
            return "plane" if self.plane else "trajectory"
        return ("interp" if self.target else "1d") if self.y is None else "2d"

    @property
    def path(self) -> str:
        """The surface file: OUT/<checkpoint's folder>_<stem>[_to_<target>]_<kind>.h5 (a plane names its three
        checkpoints), or OUT/<name>_<kind>.h5."""
        others = [self.target] if self.target else list(self.plane)
        name = self.name or "_".join([run_tag(self.checkpoint), *(("to_" if self.target else "") + run_tag(o)
                                                                  for o in others)])
        return os.path.join(self.out, f"{name}_{self.kind}.h5")
