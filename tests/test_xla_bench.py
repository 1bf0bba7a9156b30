"""benchmarks/xla_bench.py and benchmarks/loop_vs_step.py, once each on a tiny model: every
command-line path runs and gives the fields the README's tables show."""

import glob
import json
import math
import re
import sys

import pytest
from helpers import REPO, TINY_CONFIG

from jaxseg.config import recipes
from jaxseg.models import onednn_calls

sys.path.insert(0, str(REPO / "benchmarks"))

import loop_vs_step  # noqa: E402
import xla_bench  # noqa: E402

FAST = ["--batch", "4", "--size", "32,32", "--warmup", "1", "--steps", "2"]


def _records(capsys) -> tuple[list[dict], str]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], out


def test_a_config_in_both_modes(data_dir, tmp_path, capsys):
    jsonl, profile = tmp_path / "bench.jsonl", tmp_path / "trace"
    spec = f"{TINY_CONFIG}:{data_dir}"
    argv = ["--config", spec, *FAST, "--jsonl", str(jsonl), "--profile", str(profile)]
    assert xla_bench.main(argv) == 0
    records, out = _records(capsys)
    assert [r["mode"] for r in records] == ["inference", "train"]
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == records
    for record in records:
        assert record["input_shape"] == [4, 32, 32, 3] and record["params"] == 29661
        assert record["compile_s"] > record["lower_s"] > 0
        assert record["step_ms_min"] <= record["step_ms"] <= record["step_ms_max"]
        assert record["flops_per_step"] > 0 and 0 < record["mfu"] < 1
        assert record["peak_mib"] >= record["arguments_mib"] + record["temporaries_mib"] - 1e-9
        assert record["rss_peak_mib"] > 0
        assert math.isclose(record["images_per_s"], 4e3 / record["step_ms"])
        assert glob.glob(f"{record['profile']}/**/*.xplane.pb", recursive=True)
    train, inference = records[1], records[0]
    assert train["flops_per_step"] > 2 * inference["flops_per_step"]  # + backward
    assert out.count(f"| `{spec}` |") == 2 and "| MFU |" in out


def test_top_ops_lists_the_slowest_instructions_of_the_step(data_dir, capsys):
    spec = f"{TINY_CONFIG}:{data_dir}"
    assert xla_bench.main(["--config", spec, *FAST, "--mode", "train", "--top-ops", "3"]) == 0
    (record,), out = _records(capsys)
    ops = record["top_ops"]
    assert len(ops) == 3 and "profile" not in record  # traced in a temporary directory
    assert ops[0]["ms"] >= ops[1]["ms"] >= ops[2]["ms"] > 0
    assert sum(op["ms"] for op in ops) < 3 * record["step_ms_max"]  # per step, not in all
    assert all(op["kind"] != "?" and op["shape"] != "?" for op in ops)  # found in the HLO
    assert any((op["source"] or "").startswith("jit(train_step)/") for op in ops)
    assert "(train), the slowest instructions per step:" in out


def test_onnxruntime_mode_times_the_exported_file(data_dir, capsys):
    pytest.importorskip("jax2onnx")
    argv = ["--config", f"{TINY_CONFIG}:{data_dir}", *FAST, "--mode", "onnxruntime", "inference"]
    assert xla_bench.main(argv) == 0
    records, out = _records(capsys)
    assert [r["mode"] for r in records] == ["inference", "onnxruntime"]  # inference first
    inference, onnx = records
    assert onnx["input_shape"] == [4, 32, 32, 3] and onnx["params"] == inference["params"]
    assert onnx["compile_s"] > 0 and onnx["step_ms_min"] <= onnx["step_ms"] <= onnx["step_ms_max"]
    assert onnx["flops_per_step"] == inference["flops_per_step"]  # XLA's count of the same
    assert math.isclose(onnx["images_per_s"], 4e3 / onnx["step_ms"])
    assert re.search(r"\| onnxruntime \| 4x32x32 \| float32 \|.*\| n/a \| n/a \| \d+ \|", out), out
    assert xla_bench.modes_from(["all", "train"]) == ("train", "inference", "onnxruntime")


def test_dtypes_and_remats_run_in_turn(data_dir, capsys):
    argv = ["--config", f"{TINY_CONFIG}:{data_dir}", *FAST, "--mode", "train"]
    argv += ["--dtype", "float32", "bfloat16", "--remat", "none", "blocks"]
    assert xla_bench.main(argv) == 0
    records, _ = _records(capsys)
    assert [(r["dtype"], r["remat"]) for r in records] == [
        ("float32", "none"),
        ("float32", "blocks"),
        ("bfloat16", "none"),
        ("bfloat16", "blocks"),
    ]
    # Recomputing the blocks costs FLOPs. (bfloat16 need not save memory on CPU: XLA:CPU
    # converts to float32 around its convolutions.)
    assert records[1]["flops_per_step"] > records[0]["flops_per_step"]
    # ...and saves memory: build_run compiles the step with the options remat needs on CPU.
    assert records[1]["temporaries_mib"] < 0.8 * records[0]["temporaries_mib"]


def test_onednn_convolutions_are_a_row_of_their_own(data_dir, capsys):
    argv = ["--config", f"{TINY_CONFIG}:{data_dir}", *FAST, "--mode", "train"]
    assert xla_bench.main([*argv, "--cpu-convolutions", "xla"]) == 0
    assert xla_bench.main([*argv, "--cpu-convolutions", "onednn"]) == 0
    assert xla_bench.main(argv) == 0  # the config's "auto": oneDNN where it works
    records, _ = _records(capsys)
    auto = "onednn" if onednn_calls.available() else "xla"
    assert [r["cpu_convolutions"] for r in records] == ["xla", "onednn", auto]
    assert all(r["step_ms"] > 0 and "error" not in r for r in records)


def test_a_model_name_is_benchmarked_on_shapes(data_dir, monkeypatch, capsys):
    def small_shapes(config):
        xla_bench_shapes(config, image_size=32, num_train=8, num_validation=4, num_test=4)
        config.data.options.data_dir = data_dir

    xla_bench_shapes = xla_bench.use_shapes_data
    monkeypatch.setattr(xla_bench, "use_shapes_data", small_shapes)
    argv = ["--model", "unet", "--mode", "inference", "--batch", "4", "--steps", "1"]
    assert xla_bench.main(argv) == 0
    (record,), _ = _records(capsys)
    assert (record["config"], record["input_shape"]) == ("unet", [4, 32, 32, 3])
    assert record["params"] == 31_037_893  # the paper's U-Net, 5 classes


# Parameters for the 5 shapes classes: the references' counts (tests/test_deeplab.py,
# test_segformer.py) with the classifier's 21 or 150 outputs made 5.
DEEPLAB_AND_SEGFORMER = {
    "deeplabv3_resnet18.py": ("deeplabv3", 15_899_973),
    "deeplabv3plus_resnet18.py": ("deeplabv3plus", 12_330_325),
    "segformer_b0.py": ("segformer", 3_715_429),
}


def test_the_deeplab_and_segformer_configs_are_rows_and_run(data_dir, monkeypatch, capsys):
    rows = [target.name for target in xla_bench.targets_from(xla_bench.parse_args([]))]
    camvid = {"camvid_deeplabv3plus_resnet18.py", "camvid_segformer_b0.py"}
    assert set(DEEPLAB_AND_SEGFORMER) | camvid <= set(rows)
    load_config_file = xla_bench.load_config_file

    def small_shapes(spec):
        config = load_config_file(spec)
        options = dict(image_size=32, num_train=8, num_validation=4, num_test=4)
        config.data.options.update(data_dir=data_dir, **options)
        config.train.num_devices = 1  # one compilation per step, not one per fake device
        return config

    monkeypatch.setattr(xla_bench, "load_config_file", small_shapes)
    argv = [f"--config={REPO / 'configs' / name}" for name in DEEPLAB_AND_SEGFORMER]
    # The train step only: it holds the forward pass, and compiling is this test's cost.
    argv += ["--batch", "2", "--size", "32,32", "--warmup", "0", "--steps", "1", "--mode", "train"]
    assert xla_bench.main(argv) == 0
    records, out = _records(capsys)
    expected = [
        (str(REPO / "configs" / name), model, "train", params)
        for name, (model, params) in DEEPLAB_AND_SEGFORMER.items()
    ]
    assert [(r["config"], r["model"], r["mode"], r["params"]) for r in records] == expected
    assert all(r["input_shape"] == [2, 32, 32, 3] and r["step_ms"] > 0 for r in records)
    assert out.count("configs/segformer_b0.py` | train |") == 1


def test_a_benchmark_that_does_not_fit_is_a_clear_error(data_dir, monkeypatch, capsys):
    monkeypatch.setattr(xla_bench, "available_bytes", lambda: 1024)
    spec = f"{TINY_CONFIG}:{data_dir}"
    assert xla_bench.main(["--config", spec, *FAST, "--mode", "train"]) == 1
    (record,), _ = _records(capsys)
    assert record["error"].startswith(f"{spec} (train, batch 4, 32x32, float32, remat none)")
    assert "does not fit in memory" in record["error"]
    assert "0.0 GiB are available" in record["error"]


def test_repeated_networks_are_not_rerun(data_dir, capsys):
    spec = f"{TINY_CONFIG}:{data_dir}"
    assert xla_bench.main(["--config", spec, "--config", spec, *FAST, "--mode", "train"]) == 0
    records, out = _records(capsys)
    assert records[1] == {"config": spec, "mode": "train", "same_as": spec}
    assert "The same network, batch and input as another row" in out


def test_targets_and_arguments():
    names = [target.name for target in xla_bench.targets_from(xla_bench.parse_args([]))]
    assert names == recipes()
    for bad in (["--size", "32"], ["--size", "0,32"], ["--batch", "0"], ["--dtype", "int8"]):
        with pytest.raises(SystemExit):
            xla_bench.parse_args(bad)
    config = xla_bench.Target("default", str(REPO / "configs" / "default.py")).config()
    config.data.augment.crop_size = ()
    with pytest.raises(xla_bench.BenchError, match="give --size"):
        xla_bench.input_sizes(config, None)


@pytest.mark.parametrize(
    "kind, dtype, tflops",
    [
        ("TPU v4", "bfloat16", 275),
        ("TPU v5 lite", "float32", 197),  # TPUs: against the bfloat16 peak
        ("TPU v5p", "bfloat16", 459),
        ("TPU v6 lite", "bfloat16", 918),
        ("NVIDIA A100-SXM4-80GB", "float32", 156),
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
        ("NVIDIA H100 PCIe", "bfloat16", 756),
        ("NVIDIA H200", "float32", 494.7),
    ],
)
def test_published_peaks(kind, dtype, tflops):
    assert xla_bench.published_peak(kind, dtype) == pytest.approx(tflops * 1e12)


def test_an_unknown_device_has_no_published_peak():
    assert xla_bench.published_peak("Quantum Abacus", "bfloat16") is None


def test_loop_vs_step(data_dir, capsys):
    spec = f"{TINY_CONFIG}:{data_dir}"
    argv = [spec, "--steps", "12", "--log-every", "2", "--bare-steps", "2"]
    assert loop_vs_step.main(argv) == 0
    (record,), out = _records(capsys)
    assert record["checkpoint_step"] == 6 and record["intervals_used"] == 3
    assert record["loop_images_per_s"] > 0 and record["bare_step_images_per_s"] > 0
    assert math.isfinite(record["checkpoint_stall_s"])
    assert "| loop / step |" in out
    with pytest.raises(SystemExit):
        loop_vs_step.parse_args([spec, "--steps", "5", "--log-every", "2"])
