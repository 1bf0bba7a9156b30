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

import os

from jaxseg.config import load_config_file

STAGES = {
    # learning rate, the run it starts from
    "32s": (1e-4, ""),
    "16s": (1e-5, "runs/fcn_staged_32s"),
    "8s": (1e-5, "runs/fcn_staged_16s"),
}


def get_config(stage="32s"):
    if stage not in STAGES:
        raise ValueError(f"FCN stage {stage!r} is not one of {sorted(STAGES)}")
    # configs/fcn_vgg16.py's net of that stage, data and optimizer.
    here = os.path.dirname(__file__)
    config = load_config_file(os.path.join(here, f"fcn_vgg16.py:{stage}"))
    config.optim.learning_rate, config.init.from_run = STAGES[stage]
    return config
