"""DeepLabV3 on ResNet-18 (output stride 16) on the built-in shapes: from scratch or fine-tuned.

    python train.py --config configs/deeplabv3_resnet18.py --workdir runs/deeplabv3_scratch
    python train.py --config configs/deeplabv3_resnet18.py --workdir runs/deeplabv3_tuned \\
        --config.init.encoder_weights=runs/pretrain/resnet18_shapes.safetensors
    # torchvision's deeplabv3_resnet50 (its defaults: ResNet-50 at output stride 8), the whole
    # model from its state dict, a fresh classifier for the 5 shapes classes (README, Pretrained):
    python train.py --config configs/deeplabv3_resnet18.py --workdir runs/deeplabv3_torchvision \\
        --config.model.encoder=resnet50 --config.model.output_stride=8 \\
        --config.init.model_weights=deeplabv3_resnet50.safetensors --config.optim.learning_rate=1e-4

torchvision's DeepLabV3 head (ASPP with rates 6/12/18 at output stride 16, a 3x3 conv, the
classifier at stride 16, bilinear upsampling) with configs/deeplabv3plus_resnet18.py's
data, optimizer and schedule, so the two compare DeepLabV3+'s stride-4 decoder.
"""

import os

from jaxseg.config import load_config_file, model_config


def get_config():
    # configs/deeplabv3plus_resnet18.py's data, optimizer and schedule; DeepLabV3's head.
    config = load_config_file(os.path.join(os.path.dirname(__file__), "deeplabv3plus_resnet18.py"))
    config.model = model_config("deeplabv3", encoder="resnet18", output_stride=16)
    return config
