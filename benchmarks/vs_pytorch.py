"""Train-step throughput of jaxseg models against PyTorch eager twins of the same architecture."""

import argparse
import collections
import contextlib
import os
import statistics
import tempfile
import time

import hlo_profile
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from machine import cpu_name, software, usable_cpus
from torch import nn

import jaxseg
from jaxseg import host_memory
from jaxseg.models.encoders.vgg import CAFFE
from jaxseg.models.onednn_conv import onednn_convolutions
from jaxseg.models.platforms import plain_lax_forms, xla_options
from jaxseg.models.small_conv import conv_general_dilated
from jaxseg.models.upsample import bilinear_filter

USAGE = """\
    pip install -e ".[bench]"
    python benchmarks/vs_pytorch.py --check                # unet, fcn8s, default
    python benchmarks/vs_pytorch.py fcn8s --rounds 4 --warmup 1
    python benchmarks/vs_pytorch.py unet --variants jax jax-lax  # CPU rewrites off vs on only
    python benchmarks/vs_pytorch.py unet --rounds 0 --profile    # where the jaxseg step goes
    python benchmarks/vs_pytorch.py unet --rounds 0 --conv-kernels  # XLA, jaxseg, oneDNN per conv

Variants, run in one process and taken in turn (one step each per round, after a short
pause, so load from other users of the machine hits them alike): "jax" (jaxseg with XLA's
convolutions, `train.cpu_convolutions="xla"`: every CPU rewrite in its CPU form),
"jax-onednn" (the same, its convolutions and both their gradients run by oneDNN, as jaxseg
runs by default on x86-64 Linux: jaxseg/models/onednn_conv.py, onednn_calls.py; that
library's OpenMP threads slow the PyTorch twin in the same process, so compare it with
"torch" run in a process of its own), "jax-lax" (the same step traced with the plain lax
forms, `jaxseg.models.platforms.plain_lax_forms`: XLA's own convolutions, transposed
convolutions and kernel gradients, as before the CPU rewrites, compiled without
jaxseg's XLA options), "torch" (the PyTorch eager twin
below, NCHW as PyTorch uses by default) and "torch-cl" (the twin in channels_last). Every
step is the same computation: forward in training mode (batch norm batch statistics,
dropout), mean softmax cross-entropy over all pixels, backward, AdamW (lr 1e-4, weight
decay 1e-4). The PyTorch models are written here from the jaxseg modules: same layers in
the same order, same parameter count (checked every run); `--check` also loads jaxseg's
weights into them and compares logits. PyTorch gets as many threads as JAX's CPU client
uses (the CPUs this process may run on). Reported: median images/s over the timed rounds
per variant, and ratios of those medians from the same run.
"""

VARIANTS = ("jax", "jax-onednn", "jax-lax", "torch", "torch-cl")
DEFAULT_VARIANTS = ("jax", "jax-lax", "torch")
# Pause before each timed step so the previous framework's idle worker threads stop spinning.
SETTLE_SECONDS = 0.2
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 1e-4

# name: (jaxseg model name, options, image side, batch size)
BENCHMARKS = {
    "unet": ("unet", dict(num_classes=2, base_features=64), 128, 4),
    "fcn8s": ("fcn8s", dict(num_classes=21, alignment="caffe"), 256, 2),
    "default": ("unet", dict(num_classes=5, base_features=16, depth=4), 64, 16),
}


# ---------------------------------------------------------------- PyTorch twins


class TorchDoubleConv(nn.Sequential):
    """jaxseg DoubleConv: (3x3 conv without bias, batch norm, ReLU) x 2."""

    def __init__(self, in_channels, channels):
        layers = []
        for index in range(2):
            layers += [
                nn.Conv2d(
                    in_channels if index == 0 else channels, channels, 3, padding=1, bias=False
                ),
                # flax momentum 0.9 (weight of the old statistics) is PyTorch's 0.1.
                nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class TorchUNet(nn.Module):
    """jaxseg's UNet (modern form) in PyTorch, layer for layer."""

    # Padded 3x3 convs + BN + ReLU, 2x2 max-pool, 2x2/2 up-convs with bias, [skip, upsampled]
    # concatenation, a 1x1 classifier with bias.

    def __init__(self, num_classes, base_features=64, depth=4):
        super().__init__()
        widths = [base_features * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            TorchDoubleConv(3 if level == 0 else widths[level - 1], widths[level])
            for level in range(depth + 1)
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
            for level in range(depth)
        )
        self.decoders = nn.ModuleList(
            TorchDoubleConv(2 * widths[level], widths[level]) for level in range(depth)
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x):
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                x = F.max_pool2d(x, 2, 2)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(len(self.ups))):
            x = torch.cat([skips[level], self.ups[level](x)], dim=1)
            x = self.decoders[level](x)
        return self.classifier(x)


VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def _bilinear_transposed_conv(channels, factor):
    """Caffe-aligned FCN upsampler: kernel 2f, stride f, no padding, no bias, bilinear init."""
    conv = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        filt = torch.from_numpy(bilinear_filter(2 * factor))
        for channel in range(channels):
            conv.weight[channel, channel] = filt
    return conv


def _score(in_channels, num_classes):
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class TorchFCN8s(nn.Module):
    """jaxseg's FCN-8s with alignment="caffe" (the reference voc-fcn8s) in PyTorch."""

    # VGG16 with conv1_1 padded by 100, ceil-mode pooling, unpadded 7x7 fc6 and 1x1 fc7
    # (ReLU, dropout 0.5), zero-initialised score layers, learnable bilinear transposed convs
    # without padding, and jaxseg's Caffe crop offsets.

    def __init__(self, num_classes=21):
        super().__init__()
        self.skip_offsets = CAFFE.skip_offsets
        self.final_offset = CAFFE.final_offsets[8]
        blocks, in_channels = [], 3
        for block, (width, convs) in enumerate(VGG16_BLOCKS, start=1):
            layers = []
            for index in range(1, convs + 1):
                pad = 100 if (block, index) == (1, 1) else 1
                layers += [nn.Conv2d(in_channels, width, 3, padding=pad), nn.ReLU(inplace=True)]
                in_channels = width
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Sequential(
            nn.Conv2d(512, 4096, 7),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(4096, 4096, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )
        self.score_fr = _score(4096, num_classes)
        self.score_pool4 = _score(512, num_classes)
        self.score_pool3 = _score(256, num_classes)
        self.upscore_pool4 = _bilinear_transposed_conv(num_classes, 2)
        self.upscore_pool3 = _bilinear_transposed_conv(num_classes, 2)
        self.upscore8 = _bilinear_transposed_conv(num_classes, 8)

    @staticmethod
    def _crop(x, offset, height, width):
        return x[:, :, offset : offset + height, offset : offset + width]

    def forward(self, x):
        height, width = x.shape[2:]
        pools = []
        for block in self.blocks:
            x = block(x)
            pools.append(x)
        score = self.upscore_pool4(self.score_fr(self.fc(x)))
        skip = self.score_pool4(pools[3])
        score = score + self._crop(skip, self.skip_offsets["pool4"], *score.shape[2:])
        score = self.upscore_pool3(score)
        skip = self.score_pool3(pools[2])
        score = score + self._crop(skip, self.skip_offsets["pool3"], *score.shape[2:])
        return self._crop(self.upscore8(score), self.final_offset, height, width)


def torch_model(name):
    """The PyTorch twin of benchmark `name`'s jaxseg model."""
    model_name, options, _, _ = BENCHMARKS[name]
    options = dict(options)
    if model_name == "unet":
        return TorchUNet(options.pop("num_classes"), **options)
    return TorchFCN8s(options["num_classes"])


def torch_step(model, optimizer, images, labels):
    """One PyTorch train step: cross-entropy, backward, AdamW; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ---------------------------------------------------------------- jaxseg


def jax_train_step(model, tx):
    """(params, batch_stats, opt_state, images, labels, rng) -> same + loss; state donated."""

    def step(params, batch_stats, opt_state, images, labels, rng):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates.get("batch_stats", batch_stats)

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    # jaxseg's XLA options (none inside plain_lax_forms: the jax-lax variant is XLA as it is)
    return jax.jit(step, donate_argnums=(0, 1, 2), compiler_options=xla_options())


class JaxRunner:
    """A compiled jaxseg train step and its state; `lax=True` traces the plain lax forms
    (no CPU rewrite), `onednn=True` runs its convolutions by oneDNN."""

    def __init__(self, name, images, labels, lax=False, onednn=False):
        model_name, options, _, _ = BENCHMARKS[name]
        self.model = jaxseg.get_model(model_name, **options)
        variables = self.model.init(jax.random.key(0), jnp.zeros((1, *images.shape[1:])))
        self.params = variables["params"]
        self.batch_stats = variables.get("batch_stats", {})
        tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        self.opt_state = tx.init(self.params)
        self.images, self.labels = jnp.asarray(images), jnp.asarray(labels)
        self.rng = jax.random.key(1)
        self.step_count = 0
        start = time.perf_counter()
        forms = plain_lax_forms() if lax else contextlib.nullcontext()
        with forms, onednn_convolutions() if onednn else contextlib.nullcontext():
            self.compiled = (
                jax_train_step(self.model, tx)
                .lower(
                    self.params,
                    self.batch_stats,
                    self.opt_state,
                    self.images,
                    self.labels,
                    self.rng,
                )
                .compile()
            )
        self.compile_seconds = time.perf_counter() - start

    def num_params(self):
        return sum(leaf.size for leaf in jax.tree.leaves(self.params))

    def __call__(self):
        self.step_count += 1
        rng = jax.random.fold_in(self.rng, self.step_count)
        self.params, self.batch_stats, self.opt_state, loss = self.compiled(
            self.params, self.batch_stats, self.opt_state, self.images, self.labels, rng
        )
        return float(loss)  # waits for the step


class TorchRunner:
    """The PyTorch eager twin's train step on the same batch (NCHW, or channels_last)."""

    def __init__(self, name, images, labels, channels_last=False):
        torch.manual_seed(0)
        self.model = torch_model(name).train()
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
        )
        self.labels = torch.from_numpy(labels).long()
        self.compile_seconds = 0.0

    def num_params(self):
        return sum(p.numel() for p in self.model.parameters())

    def __call__(self):
        return torch_step(self.model, self.optimizer, self.images, self.labels).item()


# ---------------------------------------------------------------- same function check


def _conv_weight(kernel):
    """HWIO (flax) -> OIHW (PyTorch Conv2d)."""
    return np.asarray(kernel).transpose(3, 2, 0, 1)


def _transposed_conv_weight(kernel):
    """lax.conv_transpose's unflipped HWIO -> PyTorch ConvTranspose2d's (I, O, H, W), flipped."""
    return np.asarray(kernel)[::-1, ::-1].transpose(2, 3, 0, 1)


def load_jax_variables(name, torch_net, variables):
    """Copies jaxseg variables into the PyTorch twin (fails on any shape mismatch)."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    pairs = []  # (torch tensor, numpy value)

    def conv(module, tree, transposed=False):
        weight = _transposed_conv_weight if transposed else _conv_weight
        pairs.append((module.weight, weight(tree["kernel"])))
        if "bias" in tree:
            pairs.append((module.bias, tree["bias"]))

    def double_conv(sequential, tree, stat_tree):
        for index in range(2):
            block, block_stats = tree[f"ConvBNReLU_{index}"], stat_tree[f"ConvBNReLU_{index}"]
            conv(sequential[3 * index], block["Conv_0"])
            bn = sequential[3 * index + 1]
            pairs.extend(
                [
                    (bn.weight, block["BatchNorm_0"]["scale"]),
                    (bn.bias, block["BatchNorm_0"]["bias"]),
                    (bn.running_mean, block_stats["BatchNorm_0"]["mean"]),
                    (bn.running_var, block_stats["BatchNorm_0"]["var"]),
                ]
            )

    if BENCHMARKS[name][0] == "unet":
        for level, block in enumerate(torch_net.encoder):
            key = f"level{level}"
            double_conv(block, params["encoder"][key], stats["encoder"][key])
        for level, block in enumerate(torch_net.decoders):
            key = f"decoder{level}"
            double_conv(block, params[key], stats[key])
            conv(torch_net.ups[level], params[f"up{level}"], transposed=True)
        conv(torch_net.classifier, params["classifier"])
    else:
        encoder = params["encoder"]
        for block, (_, convs) in enumerate(VGG16_BLOCKS, start=1):
            for index in range(1, convs + 1):
                conv(torch_net.blocks[block - 1][2 * (index - 1)], encoder[f"conv{block}_{index}"])
        conv(torch_net.fc[0], encoder["fc6"])
        conv(torch_net.fc[3], encoder["fc7"])
        for head in ("score_fr", "score_pool4", "score_pool3"):
            conv(getattr(torch_net, head), params[head]["conv"])
        for upsampler in ("upscore_pool4", "upscore_pool3", "upscore8"):
            conv(getattr(torch_net, upsampler), params[upsampler], transposed=True)
    with torch.no_grad():
        for tensor, value in pairs:
            value = torch.from_numpy(np.ascontiguousarray(value))
            if tensor.shape != value.shape:
                raise AssertionError(f"shape {tuple(value.shape)} for {tuple(tensor.shape)}")
            tensor.copy_(value)
    copied = sum(t.numel() for t, _ in pairs if isinstance(t, nn.Parameter))
    if copied != sum(p.numel() for p in torch_net.parameters()):
        raise AssertionError(f"{name}: copied {copied} parameters, not all of the twin's")


def check_same_function(name, side, batch):
    """Raises unless jaxseg's model and its PyTorch twin give the same logits, same weights.

    Compared in eval mode and, for the U-Nets, in training mode too (batch norm on batch
    statistics; FCN's dropout draws differ between frameworks).
    """
    model_name, options, _, _ = BENCHMARKS[name]
    model = jaxseg.get_model(model_name, **options)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, side, side + 4 * (model_name != "unet"), 3))
    images = images.astype(np.float32)
    variables = model.init(jax.random.key(0), jnp.asarray(images))
    # Perturb every parameter so zero-initialised layers (FCN's scores) carry signal too.
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(3), len(leaves))
    leaves = [p + 0.02 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    variables = {**variables, "params": jax.tree.unflatten(treedef, leaves)}
    net = torch_model(name)
    load_jax_variables(name, net, variables)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    modes = [False, True] if model_name == "unet" else [False]
    for train in modes:
        net.train(train)
        with torch.no_grad():
            want = net(x).permute(0, 2, 3, 1).numpy()
        got, _ = model.apply(variables, jnp.asarray(images), train=train, mutable=["batch_stats"])
        got = np.asarray(got)
        error = np.abs(got - want).max() / np.abs(want).max()
        print(
            f"  {name} ({'train' if train else 'eval'}): logits {got.shape},"
            f" max |jaxseg - torch| / max |torch| = {error:.1e}"
        )
        if got.shape != want.shape or not error < 1e-4:
            raise AssertionError(f"{name}: jaxseg and the PyTorch twin differ")


# ---------------------------------------------------------------- profile


def _op_kind(opcode, op_name, shape, kernel_shapes):
    if "conv_general_dilated" in op_name or opcode == "convolution":
        if "transpose(jvp" not in op_name:
            return "convolution, forward"
        dims = shape[shape.find("[") + 1 : shape.find("]")].split(",")
        dims = tuple(sorted(int(d) for d in dims if d))
        return (
            "convolution, kernel gradient"
            if dims in kernel_shapes
            else "convolution, input gradient"
        )
    if "reduce_window" in op_name or "reduce-window" in opcode:
        return "max-pool"
    if "select_and_scatter" in op_name or "select-and-scatter" in opcode:
        return "max-pool gradient"
    if "dot_general" in op_name or opcode == "dot":
        return "matmul"
    return "other (elementwise, batch norm, optimizer, copies)"


def profile(name, steps=2, top=12):
    """Traces `steps` jaxseg train steps and prints device time by kind of op and the top ops.

    Thunks may run concurrently, so the sums can exceed the step's wall time.
    """
    images, labels = _batch(name)
    runner = JaxRunner(name, images, labels)
    hlo_text = runner.compiled.as_text()
    instructions = hlo_profile.instructions(hlo_text)
    kernel_shapes = {
        tuple(sorted(leaf.shape)) for leaf in jax.tree.leaves(runner.params) if leaf.ndim == 4
    }
    runner()
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            for _ in range(steps):
                runner()
        per_op = hlo_profile.milliseconds_per_step(
            directory, hlo_profile.module_name(hlo_text), steps
        )
    total = sum(per_op.values())
    by_kind = collections.Counter()
    for op, ms in per_op.items():
        opcode, shape, op_name = instructions.get(op, ("?", "", ""))
        by_kind[_op_kind(opcode, op_name, shape, kernel_shapes)] += ms
    print(
        f"\nprofile of the jaxseg {name} step ({steps} steps): {total:.0f} ms of op time per step"
    )
    for kind, ms in by_kind.most_common():
        print(f"  {kind:52s} {ms:7.0f} ms  {100 * ms / total:4.1f}%")
    print("  top ops:")
    for op, ms in per_op.most_common(top):
        opcode, shape, op_name = instructions.get(op, ("?", "", ""))
        kind = _op_kind(opcode, op_name, shape, kernel_shapes)
        print(f"  {ms:7.0f} ms  {kind:30.30s} {shape.split('{')[0]:24s} {op_name[-56:]}")


def unet_conv_shapes(name):
    """(N, H, W, C_in, C_out) of every 3x3 conv of a U-Net benchmark, in forward order."""
    _, options, side, batch = BENCHMARKS[name]
    base, depth = options.get("base_features", 64), options.get("depth", 4)
    shapes = []
    for level in range(depth + 1):
        size, width = side >> level, base << level
        shapes += [(batch, size, size, width // 2 if level else 3, width)]
        shapes += [(batch, size, size, width, width)]
    for level in reversed(range(depth)):
        size, width = side >> level, base << level
        shapes += [(batch, size, size, 2 * width, width), (batch, size, size, width, width)]
    return shapes


def compare_conv_kernels(name, repeats=3):
    """Prints XLA's, jaxseg's (its CPU forms and XLA options; and those with oneDNN's
    convolutions, `onednn_convolutions`) and PyTorch's (oneDNN) time for a U-Net benchmark's
    3x3 convolutions.

    Forward, input gradient and kernel gradient of each conv are timed in turn (medians of
    `repeats`) and summed over the model's convs.
    """
    totals = collections.Counter()
    options = xla_options()  # jaxseg's; XLA's column compiles without them
    for n, h, w, c_in, c_out in unet_conv_shapes(name):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, h, w, c_in)).astype(np.float32)
        k = (0.05 * rng.normal(size=(3, 3, c_in, c_out))).astype(np.float32)
        g = rng.normal(size=(n, h, w, c_out)).astype(np.float32)

        def conv(x, k):
            return jax.lax.conv_general_dilated(
                x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        def jaxseg_conv(x, k):  # with its CPU forms (the GEMM kernel gradient)
            numbers = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
            return conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers)

        jx, jk, jg = jnp.asarray(x), jnp.asarray(k), jnp.asarray(g)
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        tk = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous()
        tg = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()

        def torch_backward(mask):
            return lambda inputs, weight, grad: torch.ops.aten.convolution_backward(
                grad, inputs, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
            )

        kernels = {
            ("xla", "forward"): jax.jit(conv),
            ("xla", "input gradient"): jax.jit(lambda x, k, g: jax.vjp(conv, x, k)[1](g)[0]),
            ("xla", "kernel gradient"): jax.jit(lambda x, k, g: jax.vjp(conv, x, k)[1](g)[1]),
            ("jaxseg", "forward"): jax.jit(jaxseg_conv, compiler_options=options),
            ("jaxseg", "input gradient"): jax.jit(
                lambda x, k, g: jax.vjp(jaxseg_conv, x, k)[1](g)[0], compiler_options=options
            ),
            ("jaxseg", "kernel gradient"): jax.jit(
                lambda x, k, g: jax.vjp(jaxseg_conv, x, k)[1](g)[1], compiler_options=options
            ),
            # the same, traced and compiled with oneDNN's convolutions (at the first call)
            ("onednn", "forward"): jax.jit(jaxseg_conv, compiler_options=options),
            ("onednn", "input gradient"): jax.jit(
                lambda x, k, g: jax.vjp(jaxseg_conv, x, k)[1](g)[0], compiler_options=options
            ),
            ("onednn", "kernel gradient"): jax.jit(
                lambda x, k, g: jax.vjp(jaxseg_conv, x, k)[1](g)[1], compiler_options=options
            ),
            ("torch", "forward"): lambda inputs, weight, _: F.conv2d(inputs, weight, padding=1),
            ("torch", "input gradient"): torch_backward([True, False, False]),
            ("torch", "kernel gradient"): torch_backward([False, True, False]),
        }
        arguments = {"xla": (jx, jk, jg), "jaxseg": (jx, jk, jg), "torch": (tx, tk, tg)}
        arguments["onednn"] = arguments["jaxseg"]
        times = collections.defaultdict(list)
        for _ in range(repeats + 1):
            for (library, part), function in kernels.items():
                args = arguments[library][: 2 if library != "torch" and part == "forward" else 3]
                within = onednn_convolutions() if library == "onednn" else contextlib.nullcontext()
                with within:
                    start = time.perf_counter()
                    jax.block_until_ready(function(*args))
                    times[library, part].append(time.perf_counter() - start)
        for key, values in times.items():
            totals[key] += statistics.median(values[1:])  # the first call compiles
    print(f"\n3x3 convolutions of {name}, summed over its {len(unet_conv_shapes(name))} convs:")
    for part in ("forward", "input gradient", "kernel gradient"):
        xla, ours, with_onednn, torch_time = (
            totals[library, part] for library in ("xla", "jaxseg", "onednn", "torch")
        )
        print(
            f"  {part:16s} XLA {1e3 * xla:6.0f} ms   jaxseg {1e3 * ours:6.0f} ms"
            f"   jaxseg with oneDNN {1e3 * with_onednn:6.0f} ms"
            f"   PyTorch {1e3 * torch_time:6.0f} ms   XLA/PyTorch time {xla / torch_time:.2f}x"
            f"   jaxseg/PyTorch time {ours / torch_time:.2f}x"
            f"   with oneDNN/PyTorch time {with_onednn / torch_time:.2f}x"
        )


# ---------------------------------------------------------------- timing


def machine_line():
    return (
        f"{usable_cpus()} CPUs usable (nproc), {cpu_name()}; {software()},"
        f" torch {torch.__version__} (threads {torch.get_num_threads()})"
    )


def _batch(name):
    """A random (images, labels) batch of the benchmark's size (NHWC float32, int32)."""
    _, options, side, batch = BENCHMARKS[name]
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, side, side, 3)).astype(np.float32)
    labels = rng.integers(0, options["num_classes"], size=(batch, side, side)).astype(np.int32)
    return images, labels


def run(name, variants, warmup, rounds):
    """Times `variants` of benchmark `name` in turn; returns {variant: [seconds per step]}."""
    _, _, side, batch = BENCHMARKS[name]
    images, labels = _batch(name)
    runners = {}
    for variant in variants:
        if variant.startswith("torch"):
            runners[variant] = TorchRunner(name, images, labels, variant == "torch-cl")
        else:
            runners[variant] = JaxRunner(
                name, images, labels, lax=variant == "jax-lax", onednn=variant == "jax-onednn"
            )
    counts = {v: r.num_params() for v, r in runners.items()}
    print(f"\n{name}: batch {batch} x {side}x{side}, parameters {counts}")
    if len(set(counts.values())) != 1:
        raise AssertionError(f"{name}: the variants' parameter counts differ: {counts}")
    for variant, runner in runners.items():
        if runner.compile_seconds:
            print(f"  {variant}: lower + compile {runner.compile_seconds:.1f} s")
    for _ in range(warmup):
        for runner in runners.values():
            runner()
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, runner in runners.items():
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            runner()
            times[variant].append(time.perf_counter() - start)
    return times, batch


def report(name, times, batch):
    medians = {v: statistics.median(t) for v, t in times.items()}
    for variant, median in medians.items():
        print(
            f"  {variant:10s} median {batch / median:6.2f} img/s"
            f"  (step {1e3 * median:7.0f} ms, {len(times[variant])} steps)"
        )
    pairs = [
        ("jax", "torch"),
        ("jax-onednn", "torch"),
        ("jax-lax", "torch"),
        ("jax", "jax-lax"),
        ("jax-onednn", "jax"),
        ("jax", "torch-cl"),
    ]
    for a, b in pairs:
        if a in medians and b in medians:
            print(f"  {a}/{b} throughput ratio {medians[b] / medians[a]:.2f}x")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # No `choices`: Python 3.11's argparse checks an empty "*" list against them and fails.
    parser.add_argument("benchmarks", nargs="*", help=f"any of {list(BENCHMARKS)} (default: all)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        choices=VARIANTS,
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--rounds", type=int, default=6, help="timed steps per variant")
    parser.add_argument(
        "--check", action="store_true", help="first check each twin computes jaxseg's function"
    )
    parser.add_argument(
        "--profile", action="store_true", help="then profile the jaxseg step (ops by kind)"
    )
    parser.add_argument(
        "--conv-kernels",
        action="store_true",
        help="then time XLA's, jaxseg's and PyTorch's kernels for each 3x3 conv of the U-Nets",
    )
    parser.add_argument(
        "--host-memory",
        choices=("system", "reuse"),
        default="system",
        help="reuse: the jaxseg tools' malloc setting (jaxseg/host_memory.py), which applies to"
        " the whole process, PyTorch included; system: glibc's defaults for both",
    )
    args = parser.parse_args()
    if args.host_memory == "reuse":  # before JAX starts its CPU client
        print(f"host memory reuse: {host_memory.reuse_freed_memory()}")
    unknown = [name for name in args.benchmarks if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; allowed: {list(BENCHMARKS)}")
    args.benchmarks = args.benchmarks or list(BENCHMARKS)
    # JAX's CPU client sizes its thread pool to the CPUs this process may run on.
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(machine_line())
    if args.check:
        for name in args.benchmarks:
            check_same_function(name, side=32 if name != "fcn8s" else 36, batch=2)
    for name in args.benchmarks:
        if args.rounds:
            times, batch = run(name, args.variants, args.warmup, args.rounds)
            report(name, times, batch)
        if args.profile:
            profile(name)
        if args.conv_kernels and BENCHMARKS[name][0] == "unet":
            compare_conv_kernels(name)


if __name__ == "__main__":
    main()
