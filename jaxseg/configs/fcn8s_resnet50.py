"""FCN-8s on ResNet-50 (torchvision layout, batch norm), trained from scratch on shapes.

    python train.py --config configs/fcn8s_resnet50.py --workdir runs/fcn8s_resnet50

Skips from layer3 (stride 16) and layer2 (stride 8) onto layer4 (stride 32),
bilinear-initialised transposed convs, zero-initialised score layers.
"""

from jaxseg.config import base_config, model_config, use_shapes_data


def get_config():
    config = base_config()
    config.model = model_config(
        "fcn8s", encoder="resnet50", upsample="transposed", alignment="same"
    )
    use_shapes_data(config, image_size=64)
    config.data.batch_size = 16

    config.optim.name = "adamw"
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 20

    config.train.num_steps = 450
    config.train.log_every = 10
    config.train.checkpoint_every = 100
    return config
