"""Datasets as in-memory tensors (MNIST-1D by default, torchvision's from a local folder) and language-model
corpora as token windows. Imports the runtime and the foundation."""

from landscape.base.lazy import lazy_exports

_API = {
    "Dataset": "datasets", "load_dataset": "datasets", "list_datasets": "datasets", "augment": "datasets",
    "windows": "corpus", "build_grammar": "corpus", "text_streams": "corpus",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
