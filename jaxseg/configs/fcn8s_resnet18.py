"""FCN-8s on ResNet-18 on the built-in shapes: from scratch, or fine-tuned from pretrained weights.

    python train.py --config configs/fcn8s_resnet18.py --workdir runs/fcn8s_resnet18_scratch
    python train.py --config configs/fcn8s_resnet18.py --workdir runs/fcn8s_resnet18_pretrained \\
        --config.init.encoder_weights=runs/pretrain/resnet18_shapes.safetensors

The second starts its encoder from torchvision-layout weights: real ImageNet ones
(README, "Pretrained encoders"), or those tools/pretrain_shapes_classifier.py makes
here without internet. Everything else (schedule, steps, data order) is the same,
so the two runs compare what the initialisation alone changes (README, Results).
"""

from jaxseg.config import base_config, model_config, use_shapes_data


def get_config():
    config = base_config()
    config.model = model_config("fcn8s", encoder="resnet18", upsample="transposed")
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
