"""Hypercolumns (Hariharan et al. 2015) on VGG16, trained from scratch on shapes.

    python train.py --config configs/hypercolumn_vgg16.py --workdir runs/hypercolumn_vgg16

Hypercolumns of pool2, conv4_3 and fc7, each projected by a 1x1 conv,
resized (bilinear) to stride 4, summed, ReLU, classified by a 2x2 grid of
location-specific classifiers interpolated per pixel, resized to the input.
"""

from jaxseg.config import base_config, model_config, use_shapes_data


def get_config():
    config = base_config()
    config.model = model_config(
        "hypercolumn",
        encoder="vgg16",
        features=("pool2", "conv4_3", "fc7"),
        projection_features=256,
        fusion="sum",
        location_grid=2,
    )
    use_shapes_data(config, image_size=64)
    config.data.batch_size = 16

    config.optim.name = "adamw"
    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 20
    config.optim.grad_clip_norm = 1.0

    config.train.num_steps = 100
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    return config
