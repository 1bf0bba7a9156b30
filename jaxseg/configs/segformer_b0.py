"""SegFormer-B0 (MiT-B0 encoder, all-MLP decoder) from scratch on the built-in shapes.

    python train.py --config configs/segformer_b0.py --workdir runs/segformer_b0
    # fine-tuned from an ImageNet MiT-B0 (transformers' nvidia/mit-b0 model.safetensors):
    python train.py --config configs/segformer_b0.py --workdir runs/segformer_b0_tuned \\
        --config.init.encoder_weights=mit-b0/model.safetensors --config.optim.learning_rate=6e-5
    # the whole model from a transformers SegFormer-B0 (nvidia/segformer-b0-finetuned-ade-
    # 512-512's model.safetensors), a fresh classifier for the 5 shapes classes:
    python train.py --config configs/segformer_b0.py --workdir runs/segformer_b0_ade \\
        --config.init.model_weights=segformer-b0-ade/model.safetensors \\
        --config.optim.learning_rate=6e-5

3,715,429 parameters for 5 classes (transformers' count). The paper fine-tunes pretrained
weights with AdamW at 6e-5 and a poly schedule; from scratch on 64x64 shapes that is far
too slow: this takes 2e-3 with a warmup and gradient clipping (validation mIoU at step 300,
measured: 0.31 at 1e-3, 0.35 at 2e-3 with clipping at 1). Measured on 2 shared CPU cores:
validation mIoU 0.40 / 0.50 / 0.59 at steps 500 / 1000 / 1500 (16 minutes, 26 images/s),
still rising; a transformer from scratch on 64x64 images (scores at 16x16) learns more
slowly than configs/default.py's U-Net.
"""

from jaxseg.config import base_config, model_config, use_shapes_data


def get_config():
    config = base_config()
    config.model = model_config("segformer", encoder="mit_b0")
    use_shapes_data(config, image_size=64)
    config.data.batch_size = 16

    config.optim.name = "adamw"
    config.optim.learning_rate = 2e-3
    config.optim.schedule = "poly"
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 0.01
    config.optim.grad_clip_norm = 1.0

    config.train.num_steps = 1500
    config.train.log_every = 50
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
