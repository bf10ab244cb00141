"""radfield: neural radiance fields that train fast on CPU and CUDA."""

__version__ = "0.1.0"
