"""The Monitor inside other frameworks' training loops: `landscape.integrations.lightning.MonitorCallback` and
`landscape.integrations.huggingface.MonitorCallback`. Each module imports its framework when it is itself imported
(on first use of the name here), and nothing else imports them: importing landscape never loads Lightning or
transformers."""

from landscape.base.lazy import lazy_exports

_API = {"lightning": "lightning", "huggingface": "huggingface"}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
