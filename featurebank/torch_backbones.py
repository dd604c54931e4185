"""PyTorch backbones behind the same feature-function interface (registered here, torch imported only on build)."""
