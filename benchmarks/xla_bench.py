"""XLA performance of jaxseg's models per config: compile time, step time, FLOPs, MFU, memory.

    python benchmarks/xla_bench.py                                # every config in configs/
    python benchmarks/xla_bench.py --config configs/unet.py --batch 8 --size 256,256
    python benchmarks/xla_bench.py --config configs/fcn_vgg16.py:8s --mode inference
    python benchmarks/xla_bench.py --model unet --size 256,256 --batch 8 --remat none blocks
    python benchmarks/xla_bench.py --config configs/default.py --profile /tmp/trace
    python benchmarks/xla_bench.py --config configs/camvid_segformer_b0.py --mode train --top-ops 8
    python benchmarks/xla_bench.py --config configs/default.py --cpu-convolutions onednn

Each config is built as training builds it (`jaxseg.run.build.build_run`, "mesh" data
parallelism over the config's devices) and benchmarked, on synthetic data of the config's
shapes, in two modes:
  train      the run's own train step (forward, loss, backward, optimizer update) on
             (state, batch, rng), the state donated as in training;
  inference  `jaxseg.inference.network.probabilities` (normalisation, the model in
             inference mode, softmax) on uint8 images, jitted.
`--mode onnxruntime` (or `all`) adds a third, which needs the onnx extra:
  onnxruntime  the same function exported as `export.py` writes it (jax2onnx: float32, the
             weights as constants, the batch fixed) and run by onnxruntime on the same
             images; its "compile s" is the export plus the session's creation.
Both take the config's training batch size and crop size (`--batch`, `--size` override
them); a model that pads its input (the original U-Net) gets the padded tile. A model name
instead of a config benchmarks that model's defaults on the built-in shapes (64x64,
batch 16, 5 classes). `--dtype` and `--remat` override `config.model.dtype` /
`config.model.remat`; given several values, each config runs with each, in turn.
`--cpu-convolutions` sets `config.train.cpu_convolutions` (auto, onednn, xla); where it comes
to oneDNN (the record says which it came to), both modes are traced and compiled with
oneDNN's convolutions on CPU (jaxseg/models/onednn_conv.py).

Reported per config and mode (JSON lines as each finishes, then a markdown table):
  compile_s         `jax.jit(...).lower(...)` plus `.compile()`, seconds.
  step_ms           median over `--steps` timed steps after `--warmup` untimed ones, and
                    the fastest and slowest of them (the spread).
  images_per_s      batch / median step time.
  flops_per_step    XLA's cost analysis of the compiled executable (`cost_analysis()`: a
                    multiply-add counts 2; with remat the recomputation counts too).
  flops_per_s, mfu  flops_per_step / median step; that over the device's peak: published
                    dense peaks per chip (`PEAK_TFLOPS`: bfloat16, and float32 where its
                    matrix units publish one: the GPUs' TF32, which XLA uses for float32
                    by default; TPUs are rated against bfloat16 whatever the dtype), and on
                    CPU a GEMM peak measured in the same run (`cpu_gemm_peak`: a 2048^3
                    jnp.dot in the compute dtype).
  memory (MiB)      `memory_analysis()` of the executable: arguments, outputs, aliased
                    (donated arguments reused for outputs), temporaries, generated code.
                    `peak_mib` is XLA's peak where the backend reports one (GPU, TPU); on
                    CPU, whose `peak_memory_in_bytes` leaves the temporaries out (it is
                    arguments + outputs), it is derived as arguments + outputs - aliased +
                    temporaries + generated code: arguments and outputs are live for the
                    whole step, and the temporaries are one allocation that XLA's heap
                    simulation sizes to the most bytes live at once.
  rss_peak_mib      the process's peak resident memory (`resource.getrusage`) while this
                    benchmark ran (reset before each one through /proc/self/clear_refs where
                    Linux allows it; otherwise the peak of the process so far).
  params            parameter count.

A benchmark whose executable needs more memory than the device has (on CPU: the memory
available to the process) stops with an error naming the config, mode and sizes; the
others still run, and the exit status is 1. `--profile DIR` records the timed steps with
`jax.profiler` in DIR/<config>-<mode>-<dtype>-remat_<remat>/ (open it with TensorBoard's
profile plugin, or its .trace.json.gz with Perfetto). `--top-ops N` profiles the timed
steps (in a temporary directory unless `--profile` is given) and lists the N HLO
instructions of the compiled step that took the most time, per step, with their shapes and
the model code they come from (`top_ops` in the record, printed after the table): how
SegFormer's 1 s depthwise-gradient loop was found (README, "Performance").
Timings on a shared machine: compare rows of one run only.
"""

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time

import hlo_profile
import jax
import jax.numpy as jnp
import numpy as np
from machine import cpu_name, software, usable_cpus

from jaxseg import host_memory
from jaxseg.config import (
    REPO,
    base_config,
    load_config_file,
    recipes,
    use_shapes_data,
)
from jaxseg.inference.network import probabilities
from jaxseg.models import onednn_conv
from jaxseg.models.onednn_conv import onednn_convolutions
from jaxseg.models.platforms import xla_options
from jaxseg.run import build_run
from jaxseg.run.state import count_params
from jaxseg.run.step import variables_of

MODES = ("train", "inference")
ONNX_MODE = "onnxruntime"  # asked for by name: it needs the onnx extra and exports first
MIB = 2**20
# Dense peak TFLOP/s per device (chip), (bfloat16, float32): vendors' data sheets. float32 on
# the GPUs is TF32 (XLA's default precision for float32 matmuls and convolutions there).
PEAK_TFLOPS = {
    "TPU v4": (275.0, None),
    "TPU v5e": (197.0, None),
    "TPU v5p": (459.0, None),
    "TPU v6e": (918.0, None),
    "A100": (312.0, 156.0),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.4, 494.7),  # SXM
    "H200": (989.4, 494.7),
}
# How JAX names those devices (`device.device_kind`), most specific first.
DEVICE_KINDS = (
    (r"TPU v5 ?lite|TPU v5e", "TPU v5e"),
    (r"TPU v6 ?lite|TPU v6e", "TPU v6e"),
    (r"TPU v5p|TPU v5$", "TPU v5p"),
    (r"TPU v4", "TPU v4"),
    (r"A100", "A100"),
    (r"H100.*PCIe", "H100 PCIe"),
    (r"H100", "H100"),
    (r"H200", "H200"),
)
GEMM_SIDE = 2048


class BenchError(Exception):
    """A benchmark that cannot run as asked; the message names the config and sizes."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A config to benchmark: its display name and how to build it."""

    name: str
    spec: str  # "path.py[:arg]" or a model name
    is_model: bool = False

    def config(self):
        if not self.is_model:
            return load_config_file(self.spec)
        config = base_config(self.spec)  # its model options at their defaults
        use_shapes_data(config)
        return config


# ---------------------------------------------------------------- the device and its peak


def machine_line() -> str:
    device = jax.devices()[0]
    return (
        f"{jax.device_count()} x {device.device_kind} ({device.platform}); host {cpu_name()},"
        f" {usable_cpus()} CPUs usable; {software()}"
    )


def published_peak(device_kind: str, dtype: str) -> float | None:
    """The device's published dense peak in FLOP/s for `dtype`, or None if not in the table.

    Args:
      device_kind: `jax.Device.device_kind`.
      dtype: the compute dtype name.

    Returns:
      FLOP/s per device; for float32 where only a bfloat16 peak is published (TPUs), that.
    """
    for pattern, name in DEVICE_KINDS:
        if re.search(pattern, device_kind):
            bf16, fp32 = PEAK_TFLOPS[name]
            peak = fp32 if dtype == "float32" and fp32 is not None else bf16
            return peak * 1e12
    return None


@functools.cache
def cpu_gemm_peak(dtype: str, side: int = GEMM_SIDE, repeats: int = 5) -> float:
    """FLOP/s of a (side x side) @ (side x side) jnp.dot in `dtype` on this CPU (median)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(side, side)), dtype)
    dot = jax.jit(jnp.dot).lower(a, a).compile()
    jax.block_until_ready(dot(a, a))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, a))
        times.append(time.perf_counter() - start)
    return 2 * side**3 / statistics.median(times)


def device_peak(dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s per device, where it comes from) for the default device."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return cpu_gemm_peak(dtype), f"measured {GEMM_SIDE}^3 {dtype} GEMM"
    peak = published_peak(device.device_kind, dtype)
    return peak, "published" if peak else f"no published peak for {device.device_kind}"


# ---------------------------------------------------------------- memory


def available_bytes() -> int | None:
    """What the next allocations may use: the device's limit on GPU/TPU, MemAvailable on CPU."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        return None if limit is None else limit - stats.get("bytes_in_use", 0)
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def memory_record(compiled) -> dict:
    """The executable's memory analysis in MiB, with its peak (see the module docstring)."""
    stats = compiled.memory_analysis()
    record = {
        "arguments_mib": stats.argument_size_in_bytes / MIB,
        "outputs_mib": stats.output_size_in_bytes / MIB,
        "aliased_mib": stats.alias_size_in_bytes / MIB,
        "temporaries_mib": stats.temp_size_in_bytes / MIB,
        "code_mib": stats.generated_code_size_in_bytes / MIB,
    }
    # XLA:CPU's peak_memory_in_bytes is arguments + outputs, without the temporaries.
    reported = 0 if jax.default_backend() == "cpu" else stats.peak_memory_in_bytes
    derived = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
        + stats.generated_code_size_in_bytes
    )
    record["peak_mib"] = (reported or derived) / MIB
    record["peak_mib_source"] = "xla" if reported else "derived"
    return record


def reset_peak_rss() -> bool:
    """Resets the process's peak RSS (Linux); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def check_fits(memory: dict) -> None:
    """Raises BenchError if the executable's memory beyond its (resident) arguments exceeds
    what is available (the caller names the benchmark in front of the message)."""
    available = available_bytes()
    needed = (memory["peak_mib"] - memory["arguments_mib"]) * MIB
    if available is not None and needed > available:
        raise BenchError(
            f"does not fit in memory: its step needs {needed / 2**30:.1f} GiB beyond"
            f" its {memory['arguments_mib'] / 1024:.1f} GiB of arguments, and"
            f" {available / 2**30:.1f} GiB are available. Use a smaller --batch or --size,"
            " --remat blocks, or --dtype bfloat16."
        )


def _is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


# ---------------------------------------------------------------- one benchmark


def input_sizes(config, size: tuple[int, int] | None) -> tuple[int, int]:
    """The (height, width) the benchmark feeds: `size`, else the config's crop size."""
    if size:
        return size
    crop = tuple(config.data.augment.crop_size)
    if not crop:
        raise BenchError(
            "the config trains on whole images (data.augment.crop_size is empty): give --size"
        )
    return crop


def synthetic_batch(run, batch_size: int, height: int, width: int) -> dict:
    """A host batch as the training pipeline gives one: uint8 images (padded as the model
    asks), int32 masks (padded to its output), per-pixel weights if the loss uses them."""
    image_size = label_size = (height, width)
    pads = run.model.input_padding(height, width)
    if pads:
        image_pads, label_pads = pads
        image_size = tuple(s + sum(p) for s, p in zip(image_size, image_pads))
        label_size = tuple(s + sum(p) for s, p in zip(label_size, label_pads))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (batch_size, *image_size, 3), dtype=np.uint8),
        "mask": rng.integers(0, run.info.num_classes, (batch_size, *label_size), dtype=np.int32),
    }
    if run.config.loss.use_pixel_weights:
        batch["weight"] = np.ones((batch_size, *label_size), np.float32)
    return batch


def timed_steps(step, warmup: int, steps: int, profile_dir: str | None) -> list[float]:
    """Seconds of each of `steps` calls of `step()` after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    tracing = jax.profiler.trace(profile_dir) if profile_dir else contextlib.nullcontext()
    with tracing:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return times


def prepared_config(target: Target, args, dtype: str | None, remat: str | None):
    """The target's config with the command line's overrides (dtype, remat, batch, size)."""
    config = target.config()
    if dtype:
        config.model.dtype = dtype
    if remat:
        config.model.remat = remat
    if args.batch:
        config.data.batch_size = args.batch
    if args.cpu_convolutions:
        config.train.cpu_convolutions = args.cpu_convolutions
    config.data.eval_batch_size = config.data.batch_size  # both modes take the train batch
    config.data.augment.crop_size = input_sizes(config, args.size)
    return config


def benchmark(name: str, config, modes, args) -> list[dict]:
    """Builds the run of `config` once and measures each mode (inference first: the train
    step donates the state); returns one record per mode (module docstring)."""
    run = build_run(config, parallelism="mesh")
    height, width = config.data.augment.crop_size
    batch_size = config.data.batch_size
    host_batch = synthetic_batch(run, batch_size, height, width)
    state = run.init_state()
    common = {
        "config": name,
        "model": config.model.name,
        "batch": batch_size,
        "height": height,
        "width": width,
        "input_shape": list(host_batch["image"].shape),
        "dtype": getattr(run.model, "dtype", "float32"),
        "remat": getattr(run.model, "remat", "none"),
        "params": count_params(state.params),
        "devices": run.layout.num_devices,
    }
    onednn = onednn_conv.chosen(config.train.cpu_convolutions)
    common["cpu_convolutions"] = "onednn" if onednn else "xla"
    records = []
    for mode in sorted(modes, key=("inference", ONNX_MODE, "train").index):
        if mode == ONNX_MODE:
            inference = [r for r in records if r["mode"] == "inference"]
            flops = inference[0]["flops_per_step"] if inference else None
            record = measure_onnxruntime(run, variables_of(state), host_batch, flops, args)
            record = {**common, "dtype": "float32", "mode": mode, **record}
            record["images_per_s"] = batch_size / (record["step_ms"] / 1e3)
            records.append(record)
            continue
        if mode == "train":
            function = run.train_step
            # build_run compiles the step with jaxseg's XLA options (platforms.py) and those
            # its remat needs (remat.py), and lowers it with oneDNN's convolutions if chosen.
            arguments = (state, run.layout.put_batch(host_batch), run.step_rng)
        else:
            function = jax.jit(
                functools.partial(probabilities, run.model, run.info),
                compiler_options=xla_options(),
            )
            images = run.layout.put_batch({"image": host_batch["image"]})["image"]
            arguments = (variables_of(state), images)
        what = (
            f"{name} ({mode}, batch {batch_size}, {height}x{width}, {common['dtype']},"
            f" remat {common['remat']})"
        )
        slug = f"{_slug(name)}-{mode}-{common['dtype']}-remat_{common['remat']}"
        profile_dir = args.profile and os.path.join(args.profile, slug)
        try:  # with oneDNN's convolutions, traced and compiled within their context
            with onednn_convolutions() if onednn else contextlib.nullcontext():
                record = measure(
                    function, arguments, mode == "train", common["dtype"], args, profile_dir
                )
        except BenchError as error:
            raise BenchError(f"{what} {error}") from error
        except Exception as error:
            if _is_out_of_memory(error):
                first_line = str(error).splitlines()[0]
                raise BenchError(f"{what} ran out of memory: {first_line}") from error
            raise
        record = {**common, "mode": mode, **record}
        record["images_per_s"] = batch_size / (record["step_ms"] / 1e3)
        records.append(record)
    return records


def measure(function, arguments, donates_state: bool, dtype: str, args, profile_dir):
    """Compiles `function` for `arguments` and times it; returns the
    record's compile, memory, timing and FLOP fields (module docstring)."""
    rss_reset = reset_peak_rss()
    start = time.perf_counter()
    lowered = function.lower(*arguments)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    record = {"lower_s": lowered_at - start, "compile_s": time.perf_counter() - start}
    record |= memory_record(compiled)
    check_fits(record)
    flops = (compiled.cost_analysis() or {}).get("flops")

    def step():
        nonlocal arguments
        outputs = jax.block_until_ready(compiled(*arguments))
        if donates_state:  # the state argument was donated: the next step takes the new one
            arguments = (outputs[0], *arguments[1:])

    with contextlib.ExitStack() as stack:
        if args.top_ops and not profile_dir:
            profile_dir = stack.enter_context(tempfile.TemporaryDirectory())
        times = timed_steps(step, args.warmup, args.steps, profile_dir)
        if args.top_ops:
            record["top_ops"] = top_ops(compiled.as_text(), profile_dir, args.steps, args.top_ops)
    record |= timing_record(times, flops, device_peak(dtype), rss_reset)
    if profile_dir and args.profile:
        record["profile"] = profile_dir
    return record


def top_ops(hlo_text: str, profile_dir: str, steps: int, count: int) -> list[dict]:
    """The `count` HLO instructions of a compiled program that took the most time per step
    in the `jax.profiler` trace of `steps` runs of it in `profile_dir`: time (ms), the
    instruction's kind, result shape and the source it came from (the op_name XLA keeps)."""
    table = hlo_profile.instructions(hlo_text)
    per_step = hlo_profile.milliseconds_per_step(
        profile_dir, hlo_profile.module_name(hlo_text), steps
    )
    records = []
    for op, ms in per_step.most_common(count):
        kind, shape, source = table.get(op, ("?", "?", ""))
        records.append(dict(ms=ms, instruction=op, kind=kind, shape=shape, source=source))
    return records


def measure_onnxruntime(run, variables, host_batch: dict, flops: float | None, args) -> dict:
    """Exports the inference function as `export.py` writes it (float32, the weights as
    constants, the batch fixed) and times onnxruntime on the same uint8 batch; "compile_s"
    is the export (jax2onnx) plus the session's creation. FLOPs are XLA's count of the
    same function (the inference row's), when it was measured."""
    import tempfile

    from jaxseg.inference.onnx_export import export_onnx, load_onnx

    images = host_batch["image"]
    rss_reset = reset_peak_rss()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.onnx")
        export_onnx(path, run.model, variables, run.info, images.shape[1:3], len(images))
        model = load_onnx(path)
    record = {"compile_s": time.perf_counter() - start}
    times = timed_steps(lambda: model.run(images), args.warmup, args.steps, None)
    # onnxruntime runs on the CPU here: its MFU is against the CPU's peak, if that is JAX's.
    peak = device_peak("float32") if jax.default_backend() == "cpu" else (None, "")
    return record | timing_record(times, flops, peak, rss_reset)


def timing_record(times: list[float], flops, peak: tuple, rss_reset: bool) -> dict:
    """The record's timing, FLOP/s, MFU and RSS fields (module docstring) from the timed
    steps' seconds, the FLOPs of one step and the device's (peak FLOP/s, its source)."""
    median = statistics.median(times)
    peak_flops, peak_source = peak
    return {
        "step_ms": 1e3 * median,
        "step_ms_min": 1e3 * min(times),
        "step_ms_max": 1e3 * max(times),
        "steps": len(times),
        "flops_per_step": flops,
        "flops_per_s": flops / median if flops else None,
        "peak_flops_per_s": peak_flops,
        "peak_flops_source": peak_source,
        "mfu": flops / median / peak_flops if flops and peak_flops else None,
        "rss_peak_mib": peak_rss_mib(),
        "rss_since": "this benchmark" if rss_reset else "process start",
    }


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.removesuffix(".py").replace(".py:", "_"))


# ---------------------------------------------------------------- output


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


TABLE = (
    ("config", lambda r: f"`{r['config']}`"),
    ("mode", lambda r: r["mode"]),
    ("input", lambda r: "x".join(str(s) for s in r["input_shape"][:3])),
    ("dtype", lambda r: r["dtype"] + ("" if r["remat"] == "none" else f", remat {r['remat']}")),
    ("params", lambda r: f"{r['params'] / 1e6:.1f} M"),
    ("compile s", lambda r: f"{r['compile_s']:.1f}"),
    (
        "step ms (min-max)",
        lambda r: f"{r['step_ms']:.0f} ({r['step_ms_min']:.0f}-{r['step_ms_max']:.0f})",
    ),
    ("img/s", lambda r: f"{r['images_per_s']:.2f}"),
    ("GFLOP/step", lambda r: _number(r["flops_per_step"] and r["flops_per_step"] / 1e9, ".1f")),
    ("GFLOP/s", lambda r: _number(r["flops_per_s"] and r["flops_per_s"] / 1e9, ".1f")),
    ("MFU", lambda r: _number(r["mfu"] and 100 * r["mfu"], ".0f") + "%" * bool(r["mfu"])),
    ("temp MiB", lambda r: _number(r.get("temporaries_mib"), ".0f")),
    ("peak MiB", lambda r: _number(r.get("peak_mib"), ".0f")),
    ("RSS MiB", lambda r: f"{r['rss_peak_mib']:.0f}"),
)


def markdown_table(records: list[dict]) -> str:
    """The measured records as a markdown table (failed and repeated ones are listed below
    it)."""
    lines = ["| " + " | ".join(name for name, _ in TABLE) + " |"]
    lines.append("|" + "---|" * len(TABLE))
    lines += [
        "| " + " | ".join(cell(r) for _, cell in TABLE) + " |" for r in records if "step_ms" in r
    ]
    repeated = sorted({f"`{r['config']}` (as `{r['same_as']}`)" for r in records if "same_as" in r})
    if repeated:
        lines.append(f"\nThe same network, batch and input as another row: {', '.join(repeated)}.")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def targets_from(args) -> list[Target]:
    """The configs and models asked for; every documented config when none is."""
    targets = [Target(spec, spec) for spec in args.config or []]
    targets += [Target(name, name, is_model=True) for name in args.model or []]
    if targets:
        return targets
    return [Target(spec, os.path.join(REPO, "configs", spec)) for spec in recipes()]


def modes_from(asked: list[str]) -> tuple[str, ...]:
    """The modes to run, in the order asked, "both" and "all" spelled out, once each."""
    spelled = {"both": MODES, "all": (*MODES, ONNX_MODE)}
    return tuple(dict.fromkeys(m for a in asked for m in spelled.get(a, (a,))))


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r} is not H,W (e.g. 256,256)") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"--size {text!r}: both sides must be >= 1")
    return height, width


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", action="append", help="config file[:argument] (repeatable)")
    parser.add_argument("--model", action="append", help="model name, on shapes (repeatable)")
    parser.add_argument(
        "--mode",
        nargs="+",
        choices=(*MODES, "both", ONNX_MODE, "all"),
        default=["both"],
        help=f"both: {' and '.join(MODES)}; {ONNX_MODE}: the exported ONNX file run by"
        " onnxruntime (needs jaxseg[onnx]); all: the three",
    )
    parser.add_argument("--batch", type=int, help="global batch size (default: the config's)")
    parser.add_argument("--size", type=_size, help="H,W (default: the config's crop size)")
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=("float32", "bfloat16", "float16"),
        help="compute dtype(s) (default: the config's); several are run in turn",
    )
    parser.add_argument(
        "--remat",
        nargs="+",
        choices=("none", "blocks", "convs"),
        help="rematerialisation(s) (default: the config's); several are run in turn",
    )
    parser.add_argument(
        "--cpu-convolutions",
        choices=("auto", "onednn", "xla"),
        help="train.cpu_convolutions (default: the config's): onednn runs the convolutions of"
        " both modes by oneDNN on CPU (jaxseg/models/onednn_conv.py), auto where it works",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--profile", metavar="DIR", help="jax.profiler trace of the timed steps")
    parser.add_argument(
        "--top-ops",
        type=int,
        default=0,
        metavar="N",
        help="list the N HLO instructions that took the most time per step (profiles)",
    )
    parser.add_argument("--jsonl", metavar="PATH", help="also append the JSON lines here")
    parser.add_argument(
        "--host-memory",
        choices=("reuse", "system"),
        default="reuse",
        help="reuse (as the jaxseg tools do, jaxseg/host_memory.py) or glibc's malloc defaults",
    )
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch {args.batch}: must be >= 1")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    """Runs the benchmarks; returns the exit status (1 if any failed)."""
    args = parse_args(argv)
    if args.host_memory == "reuse":  # before JAX starts its CPU client
        print(f"host memory reuse: {host_memory.reuse_freed_memory()}", flush=True)
    print(machine_line(), flush=True)
    modes = modes_from(args.mode)
    records, seen = [], {}
    variants = [(d, r) for d in args.dtype or [None] for r in args.remat or [None]]
    for target, (dtype, remat) in itertools.product(targets_from(args), variants):
        try:
            config = prepared_config(target, args, dtype, remat)
            # Recipes that differ only in training (staged FCNs) benchmark the same step.
            key = json.dumps(
                [config.model.to_dict(), config.data.name, config.data.batch_size]
                + [config.train.cpu_convolutions]
                + [tuple(config.data.augment.crop_size), config.loss.use_pixel_weights],
                sort_keys=True,
                default=str,
            )
            if key in seen:
                results = [{"config": target.name, "mode": m, "same_as": seen[key]} for m in modes]
            else:
                results = benchmark(target.name, config, modes, args)
                seen[key] = target.name
        except Exception as error:  # one config's failure does not stop the others
            message = str(error) if isinstance(error, ValueError | BenchError) else repr(error)
            results = [{"config": target.name, "mode": m, "error": message} for m in modes]
        for record in results:
            records.append(record)
            line = json.dumps(record)
            print(line, flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(line + "\n")
    print()
    print(markdown_table(records))
    for record in records:
        if record.get("top_ops"):
            print(f"\n{record['config']} ({record['mode']}), the slowest instructions per step:")
            for op in record["top_ops"]:
                share = 100 * op["ms"] / record["step_ms"]
                print(
                    f"  {op['ms']:8.1f} ms {share:5.1f}%  {op['kind']:12s} {op['shape']:24s}"
                    f" {(op['source'] or op['instruction'])[-90:]}"
                )
    failed = [r for r in records if "error" in r]
    for record in failed:
        print(f"\n{record['config']} ({record['mode']}): {record['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
