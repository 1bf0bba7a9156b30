"""FCN-8s on ResNet-18 on CamVid: from scratch, or fine-tuned from a pretrained encoder.

    python train.py --config configs/camvid_fcn8s_resnet18.py --workdir runs/camvid_fcn8s_scratch
    python train.py --config configs/camvid_fcn8s_resnet18.py --workdir runs/camvid_fcn8s_tuned \\
        --config.init.encoder_weights=runs/pretrain/resnet18_shapes.safetensors
    # data elsewhere: --config.data.options.root=/path/to/camvid

configs/camvid_unet.py with this model: the same data, augmentation and class
weights (crops of 256x320, evaluation at 360x480 padded to 384x480 for the
stride of 32); the two commands differ only in how the encoder starts (README,
Results).
"""

import os

from jaxseg.config import load_config_file, model_config


def get_config():
    # configs/camvid_unet.py's data, augmentation, class weights and optimizer.
    config = load_config_file(os.path.join(os.path.dirname(__file__), "camvid_unet.py"))
    config.model = model_config("fcn8s", encoder="resnet18", upsample="transposed")
    config.optim.learning_rate = 1e-3
    config.train.num_steps = 800
    config.train.eval_every = 400
    config.train.checkpoint_every = 200
    return config
