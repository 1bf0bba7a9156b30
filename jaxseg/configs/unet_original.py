"""U-Net, original form (Ronneberger et al. 2015): unpadded convs, no normalisation, on shapes.

    python train.py --config configs/unet_original.py --workdir runs/unet_original

Width 64, depth 4, 2x2 up-convolutions, crop-and-concat. The net predicts
the centre of its input tile: each 64x64 training crop is mirror-padded to a
252x252 tile whose 68x68 output covers it (labels padded with the ignore
label), as the paper extrapolates missing context by mirroring.
"""

from jaxseg.config import base_config, model_config, use_shapes_data


def get_config():
    config = base_config()
    config.model = model_config("unet_original", base_features=64, depth=4, upsample="transposed")
    use_shapes_data(config, image_size=64)
    config.data.batch_size = 4
    config.data.eval_batch_size = 10

    config.optim.name = "adamw"
    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 20

    config.train.num_steps = 80
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    return config
