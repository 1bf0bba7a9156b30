"""U-Net on the DSB2018 nuclei subset with the U-Net paper's border weight map.

    python train.py --config configs/dsb2018_unet.py --workdir runs/dsb2018_unet

Data: ../shared/data/dsb2018_nuclei_subset (116 train / 29 val, 256x256 to
696x520, RGB). Instance maps give each training pixel the weight
w_c(x) + 10 exp(-(d1 + d2)^2 / (2 * 5^2)) (w_c: median-frequency class
weights), which makes the net learn the gaps between touching nuclei.
Validation images (256x256 to 520x696) are padded to 528x704 (the padding is ignored).
"""

from jaxseg.config import base_config, data_config, model_config, shared_data


def get_config():
    config = base_config()
    config.model = model_config("unet", base_features=16, depth=4)

    config.data.name = "folder"
    config.data.options = data_config("folder", root=shared_data("dsb2018_nuclei_subset"))
    config.data.options.splits = ("train", "val")
    config.data.options.split_dir = "splits"
    config.data.options.class_names = ("background", "nucleus")
    config.data.options.instances_dir = "instances"
    config.data.options.weight_map_w0 = 10.0
    config.data.options.weight_map_sigma = 5.0
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.eval_pad_to = (528, 704)  # validation images differ in size: up to 520x696
    config.data.eval_pad_multiple = 16
    config.data.augment.crop_size = (256, 256)
    config.data.augment.scale_range = (0.8, 1.25)
    config.data.augment.flip = True
    config.data.augment.rotation_degrees = 180.0
    config.data.augment.elastic_sigma = 10.0

    config.loss.use_pixel_weights = True
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 50

    config.train.num_steps = 600
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    return config
