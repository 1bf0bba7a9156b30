"""The train/eval steps (written once), their data-parallel placement, and metric sums."""

import functools

import jax
import numpy as np
import pytest
from helpers import tiny_config

from jaxseg.config import model_config
from jaxseg.report import tables as reporting
from jaxseg.report.tables import MetricSums
from jaxseg.run import build_run, parallel
from jaxseg.run.step import train_step


@pytest.fixture(scope="module")
def no_bn_run(data_dir):
    config = tiny_config(data_dir)
    config.model = model_config("unet", base_features=4, depth=2, use_batch_norm=False)
    config.train.num_devices = 4
    return build_run(config)


def _close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_jitted_and_plain_train_step_agree(data_dir):
    run = build_run(tiny_config(data_dir))
    batch = next(run.train_batches())
    step = functools.partial(train_step, task=run.task)
    state = run.init_state()
    plain_state, plain_metrics = step(state, batch, run.step_rng)
    jit_state, jit_metrics = jax.jit(step)(state, batch, run.step_rng)
    # XLA fuses and orders float sums differently under jit; Adam's first step divides by
    # sqrt(v), which magnifies that in the tiniest gradients: float tolerance, not bits.
    _close(plain_state.params, jit_state.params, rtol=1e-4, atol=1e-5)
    _close(plain_state.batch_stats, jit_state.batch_stats)
    np.testing.assert_array_equal(plain_metrics["confusion"], jit_metrics["confusion"])
    assert int(plain_metrics["confusion"].sum()) == int((batch["mask"] != 255).sum())


def test_pmap_and_mesh_forms_of_the_step_agree_without_batch_norm(no_bn_run, data_dir):
    """Per-device collectives (PerDevice) reproduce the global-batch step (GlobalBatch)."""
    batches = no_bn_run.train_batches()
    batch = next(batches)
    config = no_bn_run.config.copy_and_resolve_references()
    config.train.parallelism = "pmap"
    pmap_run = build_run(config)
    mesh_state = no_bn_run.init_state()
    pmap_state = pmap_run.init_state()
    for _ in range(2):
        mesh_state, mesh_metrics = no_bn_run.train_step(
            mesh_state, no_bn_run.layout.put_batch(batch), no_bn_run.step_rng
        )
        pmap_state, pmap_metrics = pmap_run.train_step(
            pmap_state, pmap_run.layout.put_batch(batch), pmap_run.step_rng
        )
    _close(mesh_state.params, pmap_run.layout.saveable(pmap_state).params, rtol=1e-4, atol=1e-6)
    pmap_metrics = pmap_run.layout.global_metrics(pmap_metrics)
    np.testing.assert_array_equal(mesh_metrics["confusion"], pmap_metrics["confusion"])
    np.testing.assert_allclose(mesh_metrics["loss_sum"], pmap_metrics["loss_sum"], rtol=1e-5)


def test_mesh_layout_places_batches_on_the_data_axis_and_replicates_state(no_bn_run):
    layout = no_bn_run.layout
    assert layout.num_devices == 4
    batch = layout.put_batch({"mask": np.zeros((8, 4, 4), np.int32)})
    shards = batch["mask"].addressable_shards
    assert len(shards) == 4 and {s.data.shape for s in shards} == {(2, 4, 4)}
    target = layout.restore_target(no_bn_run.abstract_state)
    sharding = jax.tree.leaves(target)[0].sharding
    assert sharding.is_fully_replicated and len(sharding.device_set) == 4


def test_pmap_layout_splits_the_local_batch_and_saves_one_copy():
    layout = parallel.make_parallel("pmap", 4)
    batch = layout.put_batch({"mask": np.arange(8 * 3).reshape(8, 3)})
    assert batch["mask"].shape == (4, 2, 3)
    replicated = layout.init_state(lambda key: {"w": jax.numpy.ones(3)}, jax.random.key(0))
    assert replicated["w"].shape == (4, 3) and layout.saveable(replicated)["w"].shape == (3,)
    with pytest.raises(ValueError, match=r"data.batch_size=6 is not divisible by the 4 devices"):
        parallel.check_batch_size(6, 4)


def test_metric_sums_are_exact_fold_to_int64_and_compile_once(monkeypatch):
    monkeypatch.setattr(reporting, "MAX_PIXELS_ON_DEVICE", 100)
    sums = MetricSums()
    total = np.zeros((2, 2), np.int64)
    for value in range(1, 8):
        confusion = np.full((2, 2), value, np.int32)
        total += confusion
        metrics = {"confusion": jax.numpy.asarray(confusion), "loss_sum": jax.numpy.float32(0.5)}
        sums.add(metrics, pixels=40)
    result = sums.result()
    np.testing.assert_array_equal(result["confusion"], total)
    assert result["confusion"].dtype == np.int64
    assert result["loss_sum"] == pytest.approx(3.5)
    compiled = reporting._add._cache_size()
    other = MetricSums()  # a new accumulator (a new evaluation) reuses the compiled sum
    for _ in range(3):
        metrics = {"confusion": jax.numpy.ones((2, 2), np.int32), "loss_sum": jax.numpy.float32(1)}
        other.add(metrics, pixels=1)
    assert other.result()["confusion"].sum() == 12
    assert reporting._add._cache_size() == compiled
