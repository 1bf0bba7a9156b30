"""DeepLabV3+ on ResNet-18 on CamVid: from scratch, or fine-tuned from a pretrained encoder.

    python train.py --config configs/camvid_deeplabv3plus_resnet18.py --workdir runs/camvid_deeplab
    python train.py --config configs/camvid_deeplabv3plus_resnet18.py \\
        --workdir runs/camvid_deeplab_tuned \\
        --config.init.encoder_weights=runs/pretrain/resnet18_shapes.safetensors
    # the whole model from smp's DeepLabV3Plus("resnet18") state dict, its head refitted to
    # CamVid's 11 classes (README, Pretrained):
    python train.py --config configs/camvid_deeplabv3plus_resnet18.py --workdir runs/camvid_smp \\
        --config.init.model_weights=deeplabv3plus_resnet18.pth
    # data elsewhere: --config.data.options.root=/path/to/camvid

configs/camvid_unet.py with this model: the same data, augmentation and class
weights (crops of 256x320, evaluation at 360x480 padded to 368x480 for the output
stride of 16; the image pooling averages the padding too). Evaluate whole images:
image-level pooling makes tiles predict differently from the whole image.
"""

import os

from jaxseg.config import load_config_file, model_config


def get_config():
    # configs/camvid_unet.py's data, augmentation, class weights and optimizer.
    config = load_config_file(os.path.join(os.path.dirname(__file__), "camvid_unet.py"))
    config.model = model_config("deeplabv3plus", encoder="resnet18", output_stride=16)
    config.optim.learning_rate = 1e-3
    config.train.num_steps = 800
    config.train.eval_every = 400
    config.train.checkpoint_every = 200
    return config
