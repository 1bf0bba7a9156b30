"""U-Net, modern form (padded convs + batch norm), the paper's width 64 and depth 4, on shapes.

    python train.py --config configs/unet.py --workdir runs/unet

31,037,698 parameters for 3 -> 2 classes (here 3 -> 5). configs/default.py is
the same net at width 16, sized to learn the shapes in minutes on a CPU.
"""

from jaxseg.config import base_config, model_config, use_shapes_data


def get_config():
    config = base_config()
    config.model = model_config("unet", base_features=64, depth=4, upsample="transposed")
    use_shapes_data(config, image_size=64)
    config.data.batch_size = 16

    config.optim.name = "adamw"
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 20
    config.optim.weight_decay = 1e-4

    config.train.num_steps = 100
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    return config
