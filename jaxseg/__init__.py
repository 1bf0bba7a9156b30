"""jaxseg: semantic segmentation in JAX/Flax (FCN, Hypercolumns, U-Net), data-parallel trainer.

Extension points (each a registry with a decorator; name the entry in a config and list
the module that registers it in `config.imports`): register_model, register_encoder,
register_loss, register_dataset, register_evaluator, register_optimizer, register_schedule.

The public API below is imported lazily, on first use: `import jaxseg.models`
loads no data or training code, and `import jaxseg` loads nothing heavy.
"""

import importlib

_API = {
    "SegmentationInfo": "jaxseg.data",
    "dataset_names": "jaxseg.data",
    "load_dataset": "jaxseg.data",
    "register_dataset": "jaxseg.data",
    "register_model": "jaxseg.models",
    "register_encoder": "jaxseg.models",
    "register_loss": "jaxseg.losses",
    "loss_names": "jaxseg.losses",
    "register_evaluator": "jaxseg.evaluation",
    "evaluator_names": "jaxseg.evaluation",
    "register_optimizer": "jaxseg.run.optim",
    "register_schedule": "jaxseg.run.optim",
    "SegmentationModel": "jaxseg.models",
    "Encoder": "jaxseg.models",
    "FeatureSpec": "jaxseg.models",
    "mean_pixel_cross_entropy": "jaxseg.losses",
    "pixel_cross_entropy": "jaxseg.losses",
    "soft_dice_loss": "jaxseg.losses",
    "confusion_matrix": "jaxseg.metrics",
    "segmentation_metrics": "jaxseg.metrics",
    "get_model": "jaxseg.models",
    "model_names": "jaxseg.models",
    "model_options": "jaxseg.models",
    "build_run": "jaxseg.run",
    "load_run": "jaxseg.run",
    "train_and_evaluate": "jaxseg.train.loop",
    "evaluate_run": "jaxseg.evaluation.evaluate",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'jaxseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return __all__
