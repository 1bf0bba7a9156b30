"""FCN-8s on VGG16 (Long et al. 2015), trained from scratch on the built-in shapes.

    python train.py --config configs/fcn8s_vgg16.py --workdir runs/fcn8s_vgg16

The paper's net: VGG16 with fc6/fc7 as 7x7 and 1x1 convolutions (dropout 0.5),
zero-initialised 1x1 score layers, transposed convs initialised to bilinear
interpolation, "same" alignment (64x64 inputs are multiples of 32; the
100-pixel-padding "caffe" alignment is --config.model.alignment=caffe). No
ImageNet weights can be downloaded here, so the encoder starts from scratch;
what it reaches in the CPU budget is in the README's model table.
"""

from jaxseg.config import base_config, use_shapes_data


def get_config():
    config = base_config()
    config.model.name = "fcn8s"
    config.model.encoder = "vgg16"
    config.model.upsample = "transposed"
    config.model.train_upsample = True
    config.model.alignment = "same"

    use_shapes_data(config, image_size=64)
    config.data.batch_size = 16

    config.optim.name = "adamw"
    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 20
    config.optim.grad_clip_norm = 1.0

    config.train.num_steps = 100
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    return config
