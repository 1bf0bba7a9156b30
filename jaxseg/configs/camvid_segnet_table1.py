"""CamVid from scratch against the SegNet paper's Table 1 (FCN-Basic 47.3 / SegNet-Basic 47.7 mIoU).

    python train.py --config configs/camvid_segnet_table1.py --workdir runs/camvid_table1
    python evaluate.py --workdir runs/camvid_table1 --split test --tta --scales 0.75,1,1.25
    # data elsewhere: --config.data.options.root=/path/to/camvid

The same command resumes a stopped run. FCN-8s on ResNet-18, no pretrained weights (none
can be had offline; the paper's rows are from scratch too). Chosen by short runs
(README, Results): of the models that train on this 2-core CPU, FCN-8s/ResNet-18 runs
~4x DeepLabV3+/ResNet-18's images/s and has batch norm throughout. Recipe: SegNet's
median-frequency class weights, random scale 0.75-1.5, 256x320 crops, flips, colour
jitter, batch 8, AdamW with warmup and a cosine decay over 4000 steps (~87 epochs, about
two hours here). Evaluated as SegNet's evaluation does (the "segnet" evaluator: void
ignored, classes 0-10) on the 233 test images at their full 360x480 (padded to 384x480
for the stride of 32; the padding is ignored).
"""

import os

from jaxseg.config import load_config_file


def get_config():
    # configs/camvid_fcn8s_resnet18.py (itself configs/camvid_unet.py's data and weights).
    config = load_config_file(os.path.join(os.path.dirname(__file__), "camvid_fcn8s_resnet18.py"))
    config.evaluators = ("segnet",)
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200
    config.train.num_steps = 4000
    config.train.log_every = 50
    config.train.eval_every = 500
    config.train.checkpoint_every = 250
    config.train.keep_checkpoints = 2
    return config
