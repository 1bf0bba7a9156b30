"""SegFormer-B0 on CamVid (11 classes, void ignored): from scratch, or from ImageNet MiT-B0.

    python train.py --config configs/camvid_segformer_b0.py --workdir runs/camvid_segformer_b0
    python train.py --config configs/camvid_segformer_b0.py --workdir runs/camvid_segformer_tuned \\
        --config.init.encoder_weights=mit-b0/model.safetensors --config.optim.learning_rate=6e-5
    # or the whole model of an ADE20K SegFormer-B0, its classifier refitted to 11 classes:
    python train.py --config configs/camvid_segformer_b0.py --workdir runs/camvid_segformer_ade \\
        --config.init.model_weights=segformer-b0-ade/model.safetensors \\
        --config.optim.learning_rate=6e-5
    # data elsewhere: --config.data.options.root=/path/to/camvid

configs/camvid_unet.py's data, augmentation (256x320 crops) and class weights; evaluation at
360x480 padded to 384x480 (the encoder's stride of 32). AdamW with weight decay 0.01 and a
poly schedule as the paper; its 6e-5 is for a pretrained encoder (the second command), from
scratch this takes 1e-3 with a warmup.
"""

import os

from jaxseg.config import load_config_file, model_config


def get_config():
    config = load_config_file(os.path.join(os.path.dirname(__file__), "camvid_unet.py"))
    config.model = model_config("segformer", encoder="mit_b0")
    config.optim.learning_rate = 1e-3
    config.optim.schedule = "poly"
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 0.01
    config.train.num_steps = 800
    config.train.eval_every = 400
    config.train.checkpoint_every = 200
    return config
