"""FCN-8s on ResNet-18 on CamVid: from scratch, or fine-tuned from a pretrained encoder.

    python train.py --config configs/camvid_fcn8s_resnet18.py --workdir runs/camvid_fcn8s_scratch
    python train.py --config configs/camvid_fcn8s_resnet18.py --workdir runs/camvid_fcn8s_tuned \\
        --config.init.encoder_weights=runs/pretrain/resnet18_shapes.safetensors
    # data elsewhere: --config.data.options.root=/path/to/camvid

The same data, augmentation and class weights as configs/camvid_unet.py (crops of
256x320, evaluation at 360x480 padded to 384x480 for the stride of 32); the two
commands differ only in how the encoder starts (README, Results).
"""

from jaxseg.config import base_config, data_config, model_config, shared_data


def get_config():
    config = base_config()
    config.model = model_config("fcn8s", encoder="resnet18", upsample="transposed")

    config.data.name = "folder"
    config.data.options = data_config("folder", root=shared_data("camvid"))
    config.data.options.splits = ("train", "val", "test")
    config.data.options.split_dir = "splits"
    config.data.options.class_table = "classes.csv"
    config.data.options.ignore_label = 11
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.test_split = "test"
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.augment.crop_size = (256, 320)
    config.data.augment.scale_range = (0.75, 1.5)
    config.data.augment.flip = True
    config.data.augment.brightness = 0.2
    config.data.augment.contrast = 0.2
    config.data.augment.saturation = 0.2

    config.loss.class_weights = "median_frequency"
    config.optim.name = "adamw"
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 1e-4

    config.train.num_steps = 800
    config.train.log_every = 20
    config.train.eval_every = 400
    config.train.checkpoint_every = 200
    return config
