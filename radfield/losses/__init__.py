from radfield.losses.colour import (COLOUR_SPACES, gamma, rgb_to_hsv, rgb_to_xyz, srgb_to_linear,
                                    to_luminance, tonemap)
from radfield.losses.photometric import (PATCH_LOSSES, PHOTOMETRIC_LOSSES, PhotometricLoss,
                                         charbonnier, fft_loss, l1, l2, parse_loss, rmse,
                                         ssim_loss, to_patches)

__all__ = ["COLOUR_SPACES", "PATCH_LOSSES", "PHOTOMETRIC_LOSSES", "PhotometricLoss", "charbonnier",
           "fft_loss", "gamma", "l1", "l2", "parse_loss", "rgb_to_hsv", "rgb_to_xyz", "rmse",
           "srgb_to_linear", "ssim_loss", "to_luminance", "to_patches", "tonemap"]
