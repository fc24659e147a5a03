"""Models and their weights on disk: the registry (models by name), the language models, our checkpoints
and weights files as researchers save them. Imports the runtime, the foundation and landscape.data."""

from landscape.base.lazy import lazy_exports

_API = {
    "register": "registry", "build_model": "registry", "list_models": "registry",
    "make_checkpoint": "checkpoint_file", "save_checkpoint": "checkpoint_file", "load_checkpoint": "checkpoint_file",
    "load_model": "checkpoint_file", "load_data_for": "checkpoint_file", "read_checkpoint": "checkpoint_file",
    "load_weights_into": "formats", "find_state_dict": "weights", "weights_sha256": "formats",
    "read_weights_into": "formats", "WeightsFormat": "formats", "register_format": "formats", "FORMATS": "formats",
    "Transformer": "lm", "LSTMLanguageModel": "lm",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
