"""The shared runtime on torch: process groups and collectives, metrics as exact sums, data sources, and
one pass of a model over a source. Imports only the foundation."""

from landscape.base.lazy import lazy_exports

_API = {
    "DistInfo": "distributed", "init_distributed": "distributed", "cleanup_distributed": "distributed",
    "process_group": "distributed", "print0": "distributed", "all_reduce_sum": "distributed",
    "broadcast_object": "distributed",
    "Metric": "metrics", "Sums": "metrics", "Criterion": "metrics", "cross_entropy": "metrics", "mse": "metrics",
    "get_metric": "metrics", "make_metric": "metrics",
    "TensorSource": "sources", "StreamSource": "sources", "as_source": "sources", "rank_share": "sources",
    "LossAccuracy": "forward", "resolve_precision": "forward", "autocast_context": "forward",
    "source_sums": "forward", "loss_accuracy": "forward", "recalibrate_batchnorm": "forward",
    "batchnorm_statistics_kept": "forward", "exclusive_output": "distributed",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
