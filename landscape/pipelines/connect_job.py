"""Two checkpoints A and B joined: B aligned to A when asked (weight matching), a curve trained between them, and
every path (the line, the aligned line, the curve) evaluated at the same values of t with BatchNorm re-estimated
at each, into one curve file (landscape.core.surface_file, kind "curve") beside the bend and the aligned B as
checkpoints. Killed at any point, the same request resumes: the curve's training from its state file, the
evaluation from the points flushed.

Files, for OUT/NAME (NAME defaults to <A's tag>_to_<B's tag>):
  NAME_connect.h5   the curve file;  NAME_training.pt   the training state, while training
  NAME_bend.pt      the bend (a checkpoint: `plot2d A --plane B NAME_bend.pt` shows the plane of the curve)
  NAME_aligned.pt   B with its units permuted toward A (with --align)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.base.config import SurfaceConfig, run_tag
from landscape.base.curve_config import CURVE_BATCH, CurveConfig
from landscape.base.errors import ConfigError, UserError
from landscape.base.files import atomic_path, write_json
from landscape.connectivity.alignment import Alignment, align_models
from landscape.connectivity.barriers import barrier_rows
from landscape.connectivity.curve_training import (
    CurveTraining,
    LoaderBatches,
    ShuffledTensors,
    check_state,
    mean_loss,
    train_curve,
)
from landscape.connectivity.curves import NOTE_FILE, CurveModule, coefficient_table, midpoint, note_path
from landscape.core.curve_file import Curve, CurveFile, open_curve, read_bend, read_curve
from landscape.core.directions import plane_through
from landscape.core.fingerprint import check_fingerprint, tensors_sha256
from landscape.core.grid_eval import EvalSet, PointEvaluator, compute_surface
from landscape.core.params import Params, digest, model_tensors, snapshot, to_numpy
from landscape.core.surface_file import Surface, empty_surface
from landscape.data.datasets import augment
from landscape.models.checkpoint_file import load_data_for, save_checkpoint
from landscape.models.hf_folder import is_hf_folder
from landscape.pipelines.from_checkpoint import evaluation_of, origin_of
from landscape.pipelines.grid_job import evaluation_settings
from landscape.pipelines.inputs import Centre, load_centre, load_sets, resolve_batch_size, training_source
from landscape.runtime.distributed import DistInfo, broadcast_object, exclusive_output, print0, run_on_main
from landscape.runtime.forward import batchnorm_layers, resolve_precision
from landscape.runtime.sources import StreamSource, TensorSource


@dataclass(frozen=True)
class ConnectFiles:
    curve: str
    state: str
    bend: str
    aligned: str

    @classmethod
    def of(cls, cfg: SurfaceConfig) -> ConnectFiles:
        """The files of a request; the bend and the aligned B are save_pretrained folders when A is one."""
        stem = os.path.join(cfg.out, cfg.name or f"{run_tag(cfg.checkpoint)}_to_{run_tag(cfg.target or '')}")
        ext = "" if is_hf_folder(cfg.checkpoint) else ".pt"
        return cls(f"{stem}_connect.h5", f"{stem}_training.pt", f"{stem}_bend{ext}", f"{stem}_aligned{ext}")


@dataclass(frozen=True)
class ConnectRun:
    """What run_connect did: its files, the curve (values as computed, on rank 0; None elsewhere), the alignment
    (with --align), the training (when this call trained), and the points computed by this call."""

    files: ConnectFiles
    curve: Curve | None
    alignment: Alignment | None
    training: CurveTraining | None
    computed: int


@dataclass(frozen=True)
class Given:
    """A connect request's inputs as Python objects (landscape.connect_models): the two modules, never modified
    (the work is done on copies), and the data, which cfg.data would otherwise name."""

    model_a: nn.Module
    model_b: nn.Module
    data: Any

    def centres(self) -> tuple[Centre, Centre]:
        """Private eval-mode copies, each with the hash of its weights (what a resume must match)."""
        return tuple(Centre(copy.deepcopy(m).eval(), None, tensors_sha256(states(m)))
                     for m in (self.model_a, self.model_b))


def run_connect(cfg: SurfaceConfig, curve_cfg: CurveConfig, info: DistInfo, given: Given | None = None
                ) -> ConnectRun:
    """Join cfg.checkpoint (A) and cfg.target (B), or the modules of `given` (cfg.checkpoint and cfg.target then
    name them): align, train the curve, evaluate every path (module docstring). Every rank of the process group
    takes part; the run is the one writer of cfg.out (a second is refused before any work)."""
    if not cfg.target:
        raise UserError("connect needs two checkpoints, A and B")
    with exclusive_output(cfg.out, info):
        return _connect(cfg, curve_cfg, info, given)


def _connect(cfg: SurfaceConfig, curve_cfg: CurveConfig, info: DistInfo, given: Given | None) -> ConnectRun:
    a, b = given.centres() if given else (load_centre(cfg, cfg.checkpoint), load_centre(cfg, cfg.target))
    check_same_architecture(cfg, a, b)
    check_different(cfg, a, b)
    batch_size = resolve_batch_size(cfg.eval_batch_size, info.device)
    sets, data, metric = load_sets(cfg, a.ckpt, info.device, batch_size, given.data if given else None)
    cfg = dataclasses.replace(cfg, metric=metric)
    train = training_source(cfg, a.ckpt, sets, info.device, batch_size)
    if curve_cfg.train_batch_size is not None and a.ckpt is None and not isinstance(train, TensorSource):
        raise UserError("--train-batch-size: with --data the curve trains on the batches your loader gives; leave "
                        "the flag out (set your loader's batch size instead)")
    bn = bn_batches(cfg, a.model, train)
    model_b, alignment = b.model, None
    if cfg.align:
        model_b, alignment = align_models(a.model, b.model, cfg.align_spec, curve_cfg.seed, next(iter(sets[0].source)))
    theta_a, theta_b = states(a.model), states(model_b)
    ts = np.linspace(0.0, 1.0, curve_cfg.points)
    precision = resolve_precision(cfg.precision, info.device)
    evaluation = evaluation_of(cfg, sets, data, precision, bn_recalibrate=bn)
    fingerprint = {"checkpoint_sha256": a.sha256, "target_sha256": b.sha256, "curve": curve_cfg.curve,
                   "training": curve_cfg.training_record() if curve_cfg.curve != "none" else None,
                   "align": (cfg.align_spec or True) if cfg.align else False, "evaluation": evaluation,
                   "t": ts.tolist()}
    files = ConnectFiles.of(cfg)
    run_on_main(lambda: refuse_other_runs(files, fingerprint), info)  # before anything is written
    bend, training = the_bend(cfg, curve_cfg, a, theta_a, theta_b, sets=sets, train=train, files=files,
                              fingerprint=fingerprint, info=info, precision=precision)
    write_checkpoints(files, a, b, model_b, bend=bend, theta_a=theta_a, theta_b=theta_b, cfg=cfg, curve_cfg=curve_cfg,
                      info=info)
    origin = origin_of(cfg, a)
    if given is not None:  # a module of the caller's, not a file
        origin = dataclasses.replace(origin, model={"name": f"{type(given.model_a).__module__}:"
                                                           f"{type(given.model_a).__qualname__}", "kwargs": {}})
    curve = Curve(ts, {}, curve_cfg.curve, origin=origin, target_sha256=b.sha256,
                  config={**asdict(cfg), **asdict(curve_cfg)}, fingerprint=fingerprint,
                  alignment=alignment_record(alignment), training=training_record(training),
                  bend_at=bend_position(theta_a, theta_b, bend) if curve_cfg.curve != "none" else None)
    evaluators = path_evaluators(a.model, theta_a, theta_b, bend, b, sets=sets, cfg=cfg, curve_cfg=curve_cfg,
                                 precision=precision, bn=bn, train=train)
    names = list(evaluators["line"][0].metric_names)
    loss_names = evaluators["line"][0].loss_names
    curve.paths = {p: empty_path(ts, names, loss_names, curve.config) for p in evaluators}
    perms = {k: v.numpy() for k, v in alignment.perms.items()} if alignment is not None else {}
    sink_file = run_on_main(lambda: opened(files, curve, to_numpy(bend), perms), info)
    computed = evaluate_paths(evaluators, ts, sink_file, cfg, info)
    return ConnectRun(files, sink_file.curve if sink_file is not None else None, alignment, training, computed)


def opened(files: ConnectFiles, curve: Curve, bend: dict[str, np.ndarray], perms: dict[str, np.ndarray]) -> CurveFile:
    """The curve file, created (or resumed); the training state, now in it, is removed."""
    sink_file = open_curve(files.curve, curve, bend, perms)
    if os.path.exists(files.state):
        os.remove(files.state)
    return sink_file


def check_same_architecture(cfg: SurfaceConfig, a: Centre, b: Centre) -> None:
    """Refuse endpoints that are not one architecture (other tensors, other shapes, another model)."""
    if a.ckpt is not None and b.ckpt is not None and a.ckpt["model"] != b.ckpt["model"]:
        raise ConfigError(f"{cfg.checkpoint} ({describe(a.ckpt['model'])}) and {cfg.target} "
                        f"({describe(b.ckpt['model'])}) are different architectures; connect two checkpoints of the "
                        "same model")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    differ = sorted(k for k in set(sa) | set(sb) if k not in sa or k not in sb or sa[k].shape != sb[k].shape)
    if differ:
        raise ConfigError(f"{cfg.checkpoint} and {cfg.target} are different architectures (e.g. {differ[0]!r} "
                        "differs); connect two checkpoints of the same model")


def check_different(cfg: SurfaceConfig, a: Centre, b: Centre) -> None:
    """Refuse A and B that hold the same weights (one file twice, or a copy): no curve joins a point to itself."""
    sa, sb = states(a.model), states(b.model)
    if a.sha256 == b.sha256 or all(torch.equal(sa[k], sb[k]) for k in sa):
        raise ConfigError(f"{cfg.checkpoint} and {cfg.target} hold the same weights, so there is no path between them "
                        "to train or evaluate; give two different checkpoints")


def describe(model: dict[str, Any]) -> str:
    kwargs = ", ".join(f"{k}={v}" for k, v in model.get("kwargs", {}).items())
    return f"{model.get('name')}({kwargs})"


def bn_batches(cfg: SurfaceConfig, model: nn.Module, train: TensorSource | StreamSource) -> int | None:
    """Batches BatchNorm is re-estimated from at every t: --bn-recalibrate N, else, for a model with BatchNorm,
    the whole training subset (stale or interpolated statistics would inflate every barrier); None without."""
    if not batchnorm_layers(model):
        if cfg.bn_recalibrate:
            raise UserError("--bn-recalibrate: the model has no BatchNorm running statistics to re-estimate; leave "
                            "the flag out")
        return None
    if cfg.bn_recalibrate:
        return cfg.bn_recalibrate
    n = sum(1 for _ in train)
    print0(f"BatchNorm statistics are re-estimated at every t from {n} training batch(es) (--bn-recalibrate N "
           "for fewer)")
    return n


def states(model: nn.Module) -> Params:
    """The float tensors of the state dict (parameters and BatchNorm statistics), float32 copies on the CPU."""
    return snapshot(model_tensors(model, "states"), device="cpu")


def refuse_other_runs(files: ConnectFiles, fingerprint: dict[str, Any]) -> None:
    """Refuse a curve file or training state made by another request (other endpoints, curve, alignment...)."""
    if os.path.exists(files.curve):
        check_fingerprint(files.curve, read_curve(files.curve).fingerprint, fingerprint)
    check_state(files.state, fingerprint)


def the_bend(cfg: SurfaceConfig, curve_cfg: CurveConfig, a: Centre, theta_a: Params, theta_b: Params, *,
             sets: list[EvalSet], train: TensorSource | StreamSource, files: ConnectFiles,
             fingerprint: dict[str, Any], info: DistInfo, precision: str) -> tuple[Params, CurveTraining | None]:
    """The bend over the state tensors: read from an existing curve file, trained (or resumed), or, for
    --curve none, the midpoint (which no path uses). Its BatchNorm statistics are the endpoints' mean."""
    base = midpoint(theta_a, theta_b)
    if curve_cfg.curve == "none":
        return base, None
    stored = broadcast_object(run_on_main(lambda: read_bend(files.curve) if os.path.exists(files.curve) else None,
                                          info))
    if stored:
        return {k: torch.from_numpy(v) for k, v in stored.items()}, None
    params = [k for k, _ in a.model.named_parameters()]
    module = CurveModule(copy.deepcopy(a.model), curve_cfg.curve, theta_a, theta_b, {k: base[k] for k in params})
    data = training_batches(cfg, a, sets, train, curve_cfg, info)
    training = train_curve(module, data, mean_loss(sets[0].metric, cfg.loss_name), curve_cfg, info=info,
                           state_path=files.state, fingerprint=fingerprint, precision=precision,
                           progress=cfg.progress)
    return {**base, **training.bend}, training


def training_batches(cfg: SurfaceConfig, a: Centre, sets: list[EvalSet], train: TensorSource | StreamSource,
                     curve_cfg: CurveConfig, info: DistInfo) -> ShuffledTensors | LoaderBatches:
    """The curve's training data: the checkpoint's whole train split (augmented as its training was), or
    --data's "train" entry (else its first)."""
    if a.ckpt is not None:
        data = load_data_for(a.ckpt, cfg.data_dir, cfg.download)
        x, y = data.split("train")
        return ShuffledTensors(x, y, curve_cfg.train_batch_size or CURVE_BATCH, info, curve_cfg.seed,
                               augment if data.augment else None)
    if isinstance(train, TensorSource):
        return ShuffledTensors(train.x.cpu(), train.y.cpu(), curve_cfg.train_batch_size or CURVE_BATCH, info,
                               curve_cfg.seed)
    return LoaderBatches(train.batches, info, curve_cfg.seed)


def path_evaluators(model: nn.Module, theta_a: Params, theta_b: Params, bend: Params, b: Centre,
                    *, sets: list[EvalSet], cfg: SurfaceConfig, curve_cfg: CurveConfig, precision: str,
                    bn: int | None, train: TensorSource | StreamSource) -> dict[str, tuple[PointEvaluator, str]]:
    """Per path, its evaluator (theta = c_A A + c_C C + c_B B over the state tensors: exact at both ends) and the
    curve whose coefficients it takes. The line joins A to B as given; the aligned line and the curve join A to
    the aligned B when aligning."""
    zero = {k: torch.zeros_like(v) for k, v in theta_a.items()}
    channels_last, bn_source = evaluation_settings(sets, cfg.channels_last, bn, train)

    def evaluator(end: Params) -> PointEvaluator:
        return PointEvaluator(model, zero, [theta_a, bend, end], sets, dir_type="states", precision=precision,
                              channels_last=channels_last, compile=False, points_per_pass=1, bn=bn_source,
                              loss_name=cfg.loss_name)

    aligned = evaluator(theta_b)
    plain = evaluator(states(b.model)) if cfg.align else aligned
    paths = {"line": (plain, "line")}
    if cfg.align:
        paths["aligned_line"] = (aligned, "line")
    if curve_cfg.curve != "none":
        paths["curve"] = (aligned, curve_cfg.curve)
    return paths


def empty_path(ts: np.ndarray, names: list[str], loss_names: list[str], config: dict[str, Any]) -> Surface:
    """One path's values over t, none done yet."""
    return empty_surface(ts, None, names, config={**config, "loss_metrics": loss_names})


def evaluate_paths(evaluators: dict[str, tuple[PointEvaluator, str]], ts: np.ndarray, sink_file: CurveFile | None,
                   cfg: SurfaceConfig, info: DistInfo) -> int:
    """Each path's points not yet in the file, split across ranks and flushed as they finish."""
    computed = 0
    try:
        for name, (evaluator, kind) in evaluators.items():
            sink = sink_file.sink(name) if sink_file is not None else None
            computed += compute_surface(evaluator, coefficient_table(kind, ts), sink, info, cfg.flush_seconds,
                                        cfg.progress)
    finally:
        if sink_file is not None:
            sink_file.close()
    return computed


def bend_position(theta_a: Params, theta_b: Params, bend: Params) -> tuple[float, float] | None:
    """Where the bend sits in the plane plot2d draws through A, B and the bend (A at (0, 0), B at (1, 0))."""
    try:
        _, (alpha, beta) = plane_through(theta_a, theta_b, bend)
    except UserError:  # the bend on the line A-B (untrained, or trained back onto it): no plane
        return None
    return float(alpha), float(beta)


def alignment_record(found: Alignment | None) -> dict[str, Any]:
    if found is None:
        return {}
    return {"moved": found.moved, "units": found.units, "permutations": len(found.perms), "sweeps": found.sweeps,
            "distance_before": found.distance_before, "distance_after": found.distance_after}


def training_record(training: CurveTraining | None) -> dict[str, Any]:
    if training is None:
        return {}
    return {"epoch_losses": training.epoch_losses, "steps": training.steps, "seconds": training.seconds}


def write_checkpoints(files: ConnectFiles, a: Centre, b: Centre, model_b: nn.Module, *, bend: Params,
                      theta_a: Params, theta_b: Params, cfg: SurfaceConfig, curve_cfg: CurveConfig,
                      info: DistInfo) -> None:
    """The bend (with --curve bezier/polychain) and the aligned B (with --align) as checkpoints of A's kind: ours,
    with a `curve` entry naming the endpoints, or a plain state dict for the user's own model (--model)."""
    def write() -> None:
        curve_note = {"curve": curve_cfg.curve, "endpoints": [os.path.abspath(cfg.checkpoint),
                                                              os.path.abspath(cfg.target or "")],
                      "endpoints_sha256": [a.sha256, b.sha256], "aligned": bool(cfg.align),
                      "ends_digest": [digest(theta_a), digest(theta_b)]}
        if curve_cfg.curve != "none":
            save_as(files.bend, a, with_tensors(a.model, bend), {"curve": curve_note})
        if cfg.align:
            save_as(files.aligned, b, model_b, {"aligned_to": curve_note["endpoints"][0]})

    run_on_main(write, info)


def with_tensors(model: nn.Module, tensors: Params) -> nn.Module:
    """A copy of `model` with these state tensors written into its own (a tied weight, listed once, moves with
    its alias: writing the state dict by names would leave the alias at the old value)."""
    copied = copy.deepcopy(model)
    live = model_tensors(copied, "states")
    with torch.no_grad():
        for k, v in tensors.items():
            live[k].copy_(v)
    return copied


def save_as(path: str, like: Centre, model: nn.Module, extra: dict[str, Any]) -> None:
    """`model`'s weights in a file like `like`'s: our checkpoint (model, data, train config, and `extra`), a
    save_pretrained folder (a HuggingFace model: `path` has no extension), else a plain state dict."""
    if like.ckpt is None and not path.endswith(".pt"):
        tmp = f"{path}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        write_json(os.path.join(tmp, NOTE_FILE), extra)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        return
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if like.ckpt is None:  # a plain state dict, as the user's code loads it; what it is goes beside it
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        write_json(note_path(path), extra)
        return
    keep = ("format", "format_version", "package_version", "model", "data", "train_config")
    save_checkpoint({**{k: like.ckpt[k] for k in keep if k in like.ckpt}, "metrics": {}, "state_dict": state,
                     **extra}, path)


def connect_report(run: ConnectRun) -> str:
    """What a connect run found, for the output: the alignment, the training, and every path's barriers."""
    lines = []
    if run.alignment is not None:
        lines.append(run.alignment.summary())
    if run.training is not None:
        t = run.training
        lines.append(f"curve trained: {t.steps_run} of {t.steps} steps in this run ({t.seconds:.1f}s), mean train "
                     f"loss along the curve {t.epoch_losses[0]:.4f} (first epoch) -> {t.epoch_losses[-1]:.4f} (last)")
    rows = barrier_rows(run.curve)
    lines.append(f"{'path':<13} {'metric':<12} {'barrier':>9} {'at t':>6} {'at A':>9} {'at B':>9} {'peak':>9}")
    lines += [f"{r['path']:<13} {r['metric']:<12} {r['barrier']:>9.4g} {r['t_at_barrier']:>6.2f} {r['at_a']:>9.4g} "
              f"{r['at_b']:>9.4g} {r['peak']:>9.4g}" for r in rows]
    lines.append(f"computed {run.computed} points -> {run.files.curve}")
    return "\n".join(lines)
