"""The directions a request asks for: random (filter-normalized), read from a file, toward a target checkpoint,
through a plane of three checkpoints, along the Hessian's top eigenvectors, or the plane of a trajectory's two
leading principal components; with what the figure should say of them (axis names, markers)."""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
from torch import nn

from landscape.base.config import CURVATURES, SurfaceConfig, run_tag
from landscape.base.errors import UserError
from landscape.connectivity.alignment import align_models
from landscape.connectivity.curves import CURVES, plane_coordinates, read_curve_note
from landscape.core.directions import (
    DirectionSpec,
    check_compatible,
    complete,
    covered_tensors,
    create_random_directions,
    output_axes,
    plane_through,
    restrict,
    target_direction,
)
from landscape.core.params import Params, digest, from_numpy, model_tensors, norm, snapshot
from landscape.core.pca import trajectory_pca
from landscape.core.surface_file import Annotations, Markers, Surface, read_directions, read_surface
from landscape.curvature.hessian import eigenvalues
from landscape.curvature.operators import curvature_of, curvature_operator
from landscape.pipelines.inputs import Centre, load_centre, moved_tensors
from landscape.runtime.distributed import DistInfo, broadcast_object, print0, run_on_main
from landscape.runtime.metrics import make_metric
from landscape.runtime.sources import StreamSource, TensorSource, rank_share


def make_directions(centre: Centre, cfg: SurfaceConfig, train: TensorSource | StreamSource, info: DistInfo
                    ) -> tuple[Params, list[Params], Annotations]:
    """theta0 (float32, CPU), the directions and what the plot should say of them: from a file, toward a target
    checkpoint, through a plane of three checkpoints, along the Hessian's top eigenvectors (on `train`), or
    random."""
    model = centre.model
    theta0 = snapshot(model_tensors(model, cfg.dir_type), device="cpu")
    n = 1 if cfg.kind in ("1d", "interp") else 2
    spec = DirectionSpec(cfg.dir_type, cfg.norm, cfg.ignore, cfg.seed, cfg.orthogonal)
    moved = moved_tensors(model, theta0, cfg.params or None, cfg.trainable_only)
    axes = output_axes(model)
    made = _made_alike(cfg) if cfg.directions_file in CURVATURES or cfg.trajectory else None
    if made is not None:
        # a resume: the eigenvectors or principal components it was made with, not a recomputation whose last
        # bits may differ (on another number of processes)
        return theta0, [from_numpy(d) for d in read_directions(cfg.path)], made.annotations
    if cfg.directions_file in CURVATURES:
        metric = make_metric(cfg.metric, cfg.criterion, cfg.criterion_kwargs)
        return theta0, *hessian_directions(model, theta0, train, n, spec=spec, moved=moved, metric=metric, info=info,
                                           loss_name=cfg.loss_name, axes=axes, curvature=cfg.directions_file)
    if cfg.trajectory:
        made = run_on_main(lambda: trajectory_directions(cfg, centre, theta0, spec, moved), info)
        return theta0, *broadcast_object(made)
    if cfg.directions_file:
        dirs = [from_numpy(d) for d in read_directions(cfg.directions_file)]
        if len(dirs) < n:
            raise UserError(f"{cfg.directions_file} holds {len(dirs)} direction(s) but a {cfg.kind} surface needs {n}")
        for d in dirs[:n]:
            check_compatible(d, theta0, f"direction in {cfg.directions_file}")
        return theta0, dirs[:n], Annotations()
    others = [load_centre(cfg, p) for p in ([cfg.target] if cfg.target else list(cfg.plane))]
    batch = next(iter(train)) if cfg.align else None  # the aligned networks' outputs are checked on it
    models = [aligned_to(model, c, p, cfg, batch) for c, p in zip(others, [cfg.target] if cfg.target else cfg.plane)]
    thetas = [snapshot(model_tensors(m, cfg.dir_type), device="cpu") for m in models]
    if cfg.plane:
        dirs, (alpha, beta) = plane_through(theta0, *thetas)
        names = tuple(run_tag(p) for p in (cfg.checkpoint, *cfg.plane))
        markers = Markers(names, np.array([[0.0, 0.0], [1.0, 0.0], [alpha, beta]]), "points")
        curve = curve_on_plane(model, models[0], read_curve_note(cfg.plane[1], others[1].ckpt), (alpha, beta))
        return theta0, [restrict(d, moved) for d in dirs], Annotations(markers=markers, curve=curve)
    if cfg.target:
        d1 = restrict(target_direction(theta0, thetas[0]), moved)
        return theta0, [d1, *create_random_directions(theta0, 2, spec, moved, axes)[1:n]], Annotations()
    return theta0, create_random_directions(theta0, n, spec, moved, axes), Annotations()


def aligned_to(model_a: nn.Module, other: Centre, path: str, cfg: SurfaceConfig, batch: Any) -> nn.Module:
    """`other`'s model, its hidden units permuted toward model_a's with --align (weight matching; its outputs on
    `batch` checked unchanged); a bend that landscape.connect trained toward an aligned B is in A's order already
    and is left as it is."""
    note = read_curve_note(path, other.ckpt)
    if not cfg.align or (note is not None and note.get("aligned")):
        return other.model
    aligned, found = align_models(model_a, other.model, cfg.align_spec, batch=batch)
    print0(f"{run_tag(path)}: {found.summary()}")
    return aligned


def curve_on_plane(model_a: nn.Module, model_b: nn.Module, note: dict[str, Any] | None, bend_at: tuple[float, float]
                   ) -> np.ndarray | None:
    """The curve of a plane A, B, C whose C is the bend (`note`: what it says of its curve) of a curve
    landscape.connect trained between exactly these A and B: its coordinates on the plane (drawn over the contours,
    as Garipov et al.'s Figure 1); else None."""
    if note is None or note.get("curve") not in CURVES:
        return None
    ends = [digest(snapshot(model_tensors(m, "states"), device="cpu")) for m in (model_a, model_b)]
    if ends != note.get("ends_digest"):
        hint = "; add --align, or give its NAME_aligned.pt as B" if note.get("aligned") else ""
        print0(f"the bend's curve was trained between other endpoints than this plane's first two checkpoints, so "
               f"it is not drawn{hint}")
        return None
    return plane_coordinates(note["curve"], np.linspace(0.0, 1.0, 101), bend_at)


def _made_alike(cfg: SurfaceConfig) -> Surface | None:
    """cfg's file, if it exists and was asked for with the same kind of derived directions (Hessian, or the same
    trajectory); another file there is left to the fingerprint check, which refuses it."""
    if not os.path.exists(cfg.path):
        return None
    old = read_surface(cfg.path)
    alike = (old.config.get("directions_file") == cfg.directions_file
             and list(old.config.get("trajectory") or []) == list(cfg.trajectory))
    return old if alike else None


def hessian_directions(model: nn.Module, theta0: Params, train: TensorSource | StreamSource, n: int,
                       *, spec: DirectionSpec, moved: set[str] | None, metric: Any, info: DistInfo,
                       loss_name: str | None = None, axes: dict[str, int] | None = None, curvature: str = "hessian"
                       ) -> tuple[list[Params], Annotations]:
    """The top n eigenvectors of the Hessian (or the `curvature` named: ggn, fisher, empirical_fisher) of the mean
    training loss at theta0, over the tensors a random direction would move (with ignore="biasbn", not the 1-D
    ones), each scaled to the norm of a filter-normalized random direction over the same tensors: alpha = 1 then
    reaches as far from theta0 in either kind of direction. The data is split across ranks; rank 0's vectors are
    shared."""
    names = set(covered_tensors(theta0, moved, spec.ignore))
    op = curvature_operator(curvature, copy.deepcopy(model).to(info.device), rank_share(train, info), metric,
                            params=names, batch_size=getattr(train, "batch_size", 512), loss_name=loss_name,
                            seed=spec.seed)
    eig = eigenvalues(op, k=n, tol=1e-4, seed=spec.seed, vectors=True)
    values, vectors = eig.top, eig.vectors
    values, vectors = broadcast_object((values, vectors))
    scale = norm(create_random_directions(theta0, 1, spec, moved, axes)[0])
    dirs = [complete({k: t * scale for k, t in v.items()}, theta0) for v in vectors]
    ordinal = ("1st", "2nd")
    what = curvature_of(curvature).label
    labels = tuple(f"{ordinal[i]} {what} eigenvector (lambda={lam:.4g})" for i, lam in enumerate(values))
    return dirs, Annotations(axis_labels=labels)


def trajectory_directions(cfg: SurfaceConfig, centre: Centre, theta0: Params, spec: DirectionSpec,
                          moved: set[str] | None) -> tuple[list[Params], Annotations]:
    """The plane of the two leading principal components of the run's checkpoints (cfg.trajectory) taken as
    differences from the final weights theta0 (landscape.core.pca), over the tensors a random direction would move;
    the path's coordinates as markers, the explained variance in the axis names (Li et al. 2018, Fig. 9)."""
    names = covered_tensors(theta0, moved, spec.ignore)
    epochs: dict[int, int | None] = {}  # noted while the checkpoints are read for the PCA, not read again for it

    def diff(i: int) -> Params:
        other = load_centre(cfg, cfg.trajectory[i])
        epochs[i] = other.ckpt.get("epoch") if other.ckpt else None
        weights = dict(other.model.named_parameters())
        missing = [k for k in names if k not in weights or weights[k].shape != theta0[k].shape]
        if missing:
            raise UserError(f"{cfg.trajectory[i]} is not the final checkpoint's architecture (e.g. {missing[:2]}); "
                            "give the checkpoints of one run")
        return {k: weights[k].detach().float() - theta0[k] for k in names}

    pca = trajectory_pca(diff, len(cfg.trajectory), {k: theta0[k] for k in names})
    dirs = [complete(d, theta0) for d in pca.directions]
    labels = [_epoch_label(p, epochs[i]) for i, p in enumerate(cfg.trajectory)]
    labels.append(_epoch_label(cfg.checkpoint, centre.ckpt.get("epoch") if centre.ckpt else None))
    markers = Markers(tuple(labels), np.vstack([pca.coords, np.zeros((1, 2))]), "path")
    ratio = pca.explained_variance_ratio
    axis = tuple(f"{n} PC: {100 * r:.2f} %" for n, r in zip(("1st", "2nd"), ratio))
    print0(f"trajectory: {len(cfg.trajectory)} checkpoints and the final one, PCA over {len(names)} tensors; "
           f"explained variance {100 * ratio[0]:.2f} % + {100 * ratio[1]:.2f} % ({pca.reads} checkpoint reads)")
    return dirs, Annotations(axis, markers, tuple(map(float, ratio)))


def trajectory_listing(paths: tuple[str, ...]) -> list[str]:
    """Which checkpoints a trajectory went through, cheaply (names and sizes): a resume over another list of
    checkpoints is refused instead of reusing the file's principal components."""
    return [f"{os.path.basename(p)}:{os.path.getsize(p) if os.path.exists(p) else 0}" for p in paths]


def _epoch_label(path: str, epoch: int | None) -> str:
    """"epoch N" for a checkpoint of trainers.train, else the file's run tag (weights of the user's model)."""
    return f"epoch {epoch}" if epoch is not None else run_tag(path)
