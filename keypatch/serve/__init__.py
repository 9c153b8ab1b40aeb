"""A Label Studio ML backend: key patches as pre-annotations, the model kept warm (``keypatch serve``).

:class:`Backend` does the work (image fetching, batching, the store); :class:`BackendServer` speaks
Label Studio's HTTP protocol over it. See ``docs/serve.md``.
"""

from keypatch.serve.backend import Backend
from keypatch.serve.config import LABELSTUDIO_CONFIG, ConfigFit, fit_config
from keypatch.serve.http import BackendServer
from keypatch.serve.images import ImageFetchError, ImageSource

__all__ = ["Backend", "BackendServer", "ConfigFit", "ImageFetchError", "ImageSource", "LABELSTUDIO_CONFIG",
           "fit_config"]
