"""Models and their weights on disk: the registry (models by name), the language models, our checkpoints
and weights files as researchers save them. Imports the runtime, the foundation and landscape.data."""

from landscape.base.lazy import lazy_exports

_MODULES = {  # module: its public names
    "registry": ("register", "build_model", "list_models"),
    "checkpoint_file": ("make_checkpoint", "save_checkpoint", "load_checkpoint", "load_model", "load_data_for",
                        "read_checkpoint"),
    "formats": ("load_weights_into", "read_weights_into", "weights_sha256", "WeightsFormat", "register_format",
                "FORMATS"),
    "weights": ("find_state_dict",),
    "lm": ("Transformer", "LSTMLanguageModel"),
}
_API = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
