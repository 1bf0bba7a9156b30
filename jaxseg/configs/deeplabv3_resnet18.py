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

from jaxseg.config import base_config, model_config, use_shapes_data


def get_config():
    config = base_config()
    config.model = model_config("deeplabv3", encoder="resnet18", output_stride=16)
    use_shapes_data(config, image_size=64)
    config.data.batch_size = 16

    config.optim.name = "adamw"
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 20
    config.optim.weight_decay = 1e-4

    config.train.num_steps = 600
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    return config
