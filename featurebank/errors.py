"""Errors that featurebank reports to users as one clean message (the CLI prints them without a traceback)."""


class FeaturebankError(Exception):
    """Base class: a problem with the user's input, files or environment, not a bug."""


class DatasetError(FeaturebankError):
    """The image folder cannot be used (missing, empty, no class folders)."""


class CacheError(FeaturebankError):
    """A feature cache is missing, ambiguous, corrupt or cannot be written."""


class AmbiguousCacheError(CacheError):
    """Several caches match a request; the message lists them and the argument that picks one."""


class WeightsError(FeaturebankError):
    """Backbone weights cannot be obtained or do not fit the backbone."""


class ModelFileError(FeaturebankError):
    """A saved run or model file is missing, incomplete or fails its integrity check."""


class InvalidArgument(FeaturebankError, ValueError):
    """An argument has a value the library cannot use (also a ValueError, for Python callers)."""
