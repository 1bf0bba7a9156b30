"""FCN-32s -> FCN-16s -> FCN-8s on VGG16, trained in stages as in the FCN paper (section 4.2).

    python train.py --config configs/fcn_vgg16_staged.py:32s --workdir runs/fcn_staged_32s
    python train.py --config configs/fcn_vgg16_staged.py:16s --workdir runs/fcn_staged_16s
    python train.py --config configs/fcn_vgg16_staged.py:8s --workdir runs/fcn_staged_8s

Run from the repository root, in this order: each stage starts from the previous
stage's run (`init.from_run`, the paths above), which copies every variable whose
path and shape match (the encoder, score_fr and the earlier skips) and leaves the
new skip's score layer at zero and its upsampler at bilinear interpolation, as in
the paper; RUN/init_report.json lists what was copied. Each later stage learns
more slowly (the paper lowers its rate at each stage). The paper starts FCN-32s
from ImageNet VGG16: add --config.init.encoder_weights=vgg16.safetensors (see the
README, "Pretrained encoders"). Here on the built-in shapes, from scratch.
"""

from jaxseg.config import base_config, model_config, use_shapes_data

STAGES = {
    # model, learning rate, run it starts from
    "32s": ("fcn32s", 1e-4, ""),
    "16s": ("fcn16s", 1e-5, "runs/fcn_staged_32s"),
    "8s": ("fcn8s", 1e-5, "runs/fcn_staged_16s"),
}


def get_config(stage="32s"):
    if stage not in STAGES:
        raise ValueError(f"FCN stage {stage!r} is not one of {sorted(STAGES)}")
    model, learning_rate, from_run = STAGES[stage]
    config = base_config()
    config.model = model_config(model, encoder="vgg16", upsample="transposed", alignment="same")
    config.init.from_run = from_run
    use_shapes_data(config, image_size=64)
    config.data.batch_size = 16

    config.optim.name = "adamw"
    config.optim.learning_rate = learning_rate
    config.optim.warmup_steps = 20
    config.optim.grad_clip_norm = 1.0

    config.train.num_steps = 100
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    return config
