"""U-Net (modern form, width 16) on the ISBI 2012 EM membranes, with the paper's augmentation.

    python train.py --config configs/isbi_unet.py --workdir runs/isbi_unet
    # data elsewhere: --config.data.options.root=/path/to/isbi2012_membrane

Data: the 30 labelled 512x512 slices, by default from
../shared/data/isbi2012_membrane. Slices 25-29 (the last five of the stack;
adjacent slices are correlated, so a contiguous block) are held out for
validation; 0-24 train. Masks: 0 = membrane, 255 = cell, read as classes
membrane / cell. Augmentation as in the U-Net paper: elastic deformation (3x3
grid, sigma 10 px, bicubic), rotations, shifts (crops), flips, plus mild
scale and brightness changes; 256x256 training crops, evaluation on the full
slices.
"""

from jaxseg.config import base_config, data_config, model_config, shared_data


def get_config():
    config = base_config()
    config.model = model_config("unet", base_features=16, depth=4)

    config.data.name = "folder"
    config.data.options = data_config("folder", root=shared_data("isbi2012_membrane"))
    config.data.options.splits = ("train",)
    config.data.options.mask_format = "binary"
    config.data.options.class_names = ("membrane", "cell")
    config.data.options.holdout = tuple(str(i) for i in range(25, 30))
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.batch_size = 4
    config.data.eval_batch_size = 5
    config.data.augment.crop_size = (256, 256)
    config.data.augment.scale_range = (0.9, 1.1)
    config.data.augment.flip = True
    config.data.augment.rotation_degrees = 180.0
    config.data.augment.elastic_sigma = 10.0
    config.data.augment.elastic_grid = 3
    config.data.augment.image_order = 3
    config.data.augment.brightness = 0.1
    config.data.augment.contrast = 0.1

    config.optim.name = "adamw"
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 1e-4

    config.evaluators = ("isbi2012",)  # evaluate.py adds the challenge's V_Rand and V_Info

    config.train.num_steps = 600
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    return config
