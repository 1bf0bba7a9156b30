"""A test config: the default shrunk to seconds (32x32 shapes, a depth-2 U-Net of width 8).

python train.py --config tests/tiny_config.py:/path/to/tfds_data_dir --workdir /tmp/run
"""

from jaxseg.config import base_config, data_config, model_config


def get_config(data_dir=""):
    config = base_config()
    config.model = model_config("unet", base_features=8, depth=2)
    config.data.name = "shapes"
    config.data.options = data_config(
        "shapes", image_size=32, num_train=64, num_validation=16, num_test=8, data_dir=data_dir
    )
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.augment.flip = True
    config.data.augment.scale_range = (0.8, 1.25)
    config.data.augment.crop_size = (32, 32)
    config.data.num_threads = 1
    config.optim.learning_rate = 3e-3
    config.train.num_steps = 4
    config.train.log_every = 1
    config.train.num_devices = 1
    return config
