"""Are two minima connected? Permutation specs and weight matching (align one network's hidden units to
another's), curves between two checkpoints (Bezier, polygonal chain) with their training, and loss barriers."""

from landscape.base.lazy import lazy_exports

_API = {
    "PermutationSpec": "permutations", "spec_for": "permutations",
    "Alignment": "alignment", "align": "alignment", "align_models": "alignment", "weight_matching": "alignment",
    "permuted": "alignment",
    "CURVES": "curves", "CurveModule": "curves", "coefficients": "curves", "plane_coordinates": "curves",
    "train_curve": "curve_training", "CurveTraining": "curve_training",
    "Barrier": "barriers", "barrier": "barriers", "path_barriers": "barriers", "barrier_rows": "barriers",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
