"""FCN-32s, FCN-16s or FCN-8s on VGG16 (Long et al. 2015), trained from scratch on shapes.

    python train.py --config configs/fcn_vgg16.py:32s --workdir runs/fcn32s_vgg16
    python train.py --config configs/fcn_vgg16.py:16s --workdir runs/fcn16s_vgg16
    python train.py --config configs/fcn_vgg16.py:8s --workdir runs/fcn8s_vgg16

The paper's nets: VGG16 with fc6/fc7 as 7x7 and 1x1 convolutions (dropout
0.5), zero-initialised 1x1 score layers, transposed convs initialised to
bilinear interpolation and learned, "same" alignment (64x64 inputs are
multiples of 32; the 100-pixel-padding "caffe" alignment is
--config.model.alignment=caffe). No ImageNet weights can be downloaded here, so
the encoder starts from scratch; what each reaches in the CPU budget is in the
README's model table.
"""

from jaxseg.config import base_config, model_config, use_shapes_data

VARIANTS = {"32s": "fcn32s", "16s": "fcn16s", "8s": "fcn8s"}


def get_config(variant="8s"):
    if variant not in VARIANTS:
        raise ValueError(f"FCN variant {variant!r} is not one of {sorted(VARIANTS)}")
    config = base_config()
    config.model = model_config(
        VARIANTS[variant],
        encoder="vgg16",
        upsample="transposed",
        train_upsample=True,
        alignment="same",
    )
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
