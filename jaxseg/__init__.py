"""jaxseg: semantic segmentation in JAX/Flax (FCN, Hypercolumns, U-Net), data-parallel trainer."""

from jaxseg.data import SegmentationInfo, dataset_names, load_dataset
from jaxseg.losses import mean_pixel_cross_entropy, pixel_cross_entropy, soft_dice_loss
from jaxseg.metrics import confusion_matrix, segmentation_metrics
from jaxseg.models import get_model, model_names, model_options, register_model

__all__ = [
    "SegmentationInfo",
    "confusion_matrix",
    "dataset_names",
    "get_model",
    "load_dataset",
    "mean_pixel_cross_entropy",
    "model_names",
    "model_options",
    "pixel_cross_entropy",
    "register_model",
    "segmentation_metrics",
    "soft_dice_loss",
]
