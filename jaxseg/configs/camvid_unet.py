"""U-Net (modern form, width 16) on CamVid (11 classes, void ignored), evaluated on its test split.

    python train.py --config configs/camvid_unet.py --workdir runs/camvid_unet
    # data elsewhere: --config.data.options.root=/path/to/camvid

Data: the SegNet version of CamVid (367 train / 101 val / 233 test, 360x480),
by default read from ../shared/data/camvid next to this repository.
Training: random scale (0.75-1.5), 256x320 crops, flips, colour jitter;
median-frequency class weights (as SegNet). Evaluation at the native 360x480
(padded to 368x480 for the 16x pooling; the padding is ignored). What it
reaches, and in how long, is in the README (Results on real data).
"""

from jaxseg.config import base_config, data_config, model_config, shared_data


def get_config():
    config = base_config()
    config.model = model_config("unet", base_features=16, depth=4)

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
    config.data.eval_pad_multiple = 16
    config.data.augment.crop_size = (256, 320)
    config.data.augment.scale_range = (0.75, 1.5)
    config.data.augment.flip = True
    config.data.augment.brightness = 0.2
    config.data.augment.contrast = 0.2
    config.data.augment.saturation = 0.2

    config.loss.class_weights = "median_frequency"
    config.optim.name = "adamw"
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 1e-4

    config.train.num_steps = 500
    config.train.log_every = 20
    config.train.eval_every = 250
    config.train.checkpoint_every = 250
    return config
