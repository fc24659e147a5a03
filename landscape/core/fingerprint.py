"""What a resume must match: a surface's fingerprint (the centre's hash, the directions' hash, what decides the
values, the grid) as JSON values, and the refusal, naming what differs, to add points to a file made otherwise.
The content hashes of directions and of a module's weights are made here, the one place."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from landscape.base.errors import UserError


def as_array(v: Any) -> np.ndarray:
    """A float32 numpy array of a numpy array or a torch tensor (any device), without importing torch here."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().float().numpy()
    return np.asarray(v, dtype=np.float32)


def directions_sha256(directions: list[dict[str, Any]]) -> str:
    """A content hash of the directions (numpy arrays or tensors by name): names, shapes and float32 bytes (schema 1
    hashed the same way)."""
    h = hashlib.sha256()
    for i, d in enumerate(directions):
        for k in sorted(d):
            a = np.ascontiguousarray(as_array(d[k]))
            h.update(f"{i}/{k}/{tuple(a.shape)}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def tensors_sha256(tensors: Any) -> str:
    """The centre's hash when it is a module in memory, not a file (a resume must match it): its named tensors
    hashed as one direction is."""
    return directions_sha256([tensors])


def fingerprint_of(checkpoint_sha256: str, dir_hash: str, evaluation: dict[str, Any], x: np.ndarray | None,
                   y: np.ndarray | None) -> dict[str, Any]:
    """What a resume must match, as JSON values. x None: the x axis is not known yet (auto), so not compared."""
    known = {"checkpoint_sha256": checkpoint_sha256, "directions_sha256": dir_hash, **evaluation}
    if x is not None:
        known.update(xcoordinates=np.asarray(x).tolist(), ycoordinates=None if y is None else np.asarray(y).tolist())
    return json.loads(json.dumps(known))


ADDED_SINCE = {"curvature": "hessian"}  # fingerprint fields newer than some files, with the value those files meant


def check_fingerprint(path: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to mix points: every field that determines the values must match (a field added since a file was
    written counts as its value then: a Hessian map without "curvature" is the Hessian's)."""
    stored = {**ADDED_SINCE, **stored} if set(ADDED_SINCE) & set(current) else stored
    diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if diff:
        names = {"checkpoint_sha256": "another checkpoint", "directions_sha256": "other directions",
                 "xcoordinates": "another x grid", "ycoordinates": "another y grid",
                 "trajectory": "another list of trajectory checkpoints",
                 "bn_recalibrate": "another --bn-recalibrate (BatchNorm re-estimation)",
                 "hessian_tol": "another Lanczos --tol", "curvature": "another --curvature", "curve": "another --curve",
                 "target_sha256": "another second checkpoint", "training": "other curve training settings",
                 "align": "another --align", "t": "another --points"}
        what = ", ".join(names.get(k, k) for k in diff)
        raise UserError(f"{path} was made with {what}; refusing to mix results: choose another --out, or delete "
                        "the file to start over")
