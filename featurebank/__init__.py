"""featurebank: extract deep image features once into HDF5, then train classifiers on them in seconds."""

from featurebank.errors import CacheError, DatasetError, FeaturebankError, WeightsError
from featurebank.extraction import ExtractReport, extract
from featurebank.load import FeatureSet, LazyFeatures, find_cache, load
from featurebank.scan import scan_folder

__version__ = "0.1.0"

__all__ = [
    "CacheError", "DatasetError", "ExtractReport", "FeatureSet", "FeaturebankError", "LazyFeatures",
    "WeightsError", "__version__", "extract", "find_cache", "load", "scan_folder",
]
