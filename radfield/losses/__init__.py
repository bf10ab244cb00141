from radfield.losses.photometric import PHOTOMETRIC_LOSSES, charbonnier, l1, l2

__all__ = ["PHOTOMETRIC_LOSSES", "charbonnier", "l1", "l2"]
