"""DeepLabV3+ on ResNet-18 (output stride 16) on the built-in shapes: from scratch or fine-tuned.

    python train.py --config configs/deeplabv3plus_resnet18.py --workdir runs/deeplabv3plus_scratch
    python train.py --config configs/deeplabv3plus_resnet18.py --workdir runs/deeplabv3plus_tuned \\
        --config.init.encoder_weights=runs/pretrain/resnet18_shapes.safetensors
    # the whole model from smp's DeepLabV3Plus("resnet18") state dict (README, Pretrained):
    python train.py --config configs/deeplabv3plus_resnet18.py --workdir runs/deeplabv3plus_smp \\
        --config.init.model_weights=deeplabv3plus_resnet18.pth

segmentation_models_pytorch's DeepLabV3Plus (separable ASPP with rates 12/24/36,
48-channel stride-4 skip, x4 bilinear upsampling) with configs/fcn8s_resnet18.py's
data, optimizer and schedule, so the two compare the decoders. On 64x64 images ASPP sees
a 4x4 map: its atrous taps beyond the map read padding, the image pooling the whole map.
"""

from jaxseg.config import base_config, model_config, use_shapes_data


def get_config():
    config = base_config()
    config.model = model_config("deeplabv3plus", encoder="resnet18", output_stride=16)
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
