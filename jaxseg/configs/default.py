"""The default: U-Net (modern form, width 16) on the built-in shapes dataset, sized for a CPU.

    python train.py                       # this config, workdir runs/default
    python train.py --config configs/default.py --workdir runs/mine --config.train.num_steps=2000

Reaches mIoU >= 0.80 on the shapes validation split in under 10 minutes on 2 CPU
cores (measured: README, Results). configs/unet.py is the paper's width (64).
"""

from jaxseg.config import base_config, model_config, use_shapes_data


def get_config():
    config = base_config()
    config.model = model_config("unet", base_features=16, depth=4, upsample="transposed")
    use_shapes_data(config, image_size=64)
    config.data.batch_size = 16

    config.optim.name = "adamw"
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 1e-4

    config.train.num_steps = 1200
    config.train.log_every = 50
    config.train.eval_every = 400
    config.train.checkpoint_every = 400
    return config
