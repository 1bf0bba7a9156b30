import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxseg.errors import ConfigError
from jaxseg.losses import (
    dice_loss,
    focal_loss,
    get_loss,
    jaccard_loss,
    loss_names,
    loss_options,
    loss_value,
    lovasz_softmax_loss,
    mean_pixel_cross_entropy,
    pixel_cross_entropy,
    register_loss,
    soft_dice_loss,
    tversky_loss,
)
from jaxseg.losses._common import at_labels
from jaxseg.registry import Registry


def _numpy_ce(logits, labels):
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


@pytest.fixture
def example():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 3, 4))
    labels[0, 0, :2] = 255
    return logits, labels


def test_ignore_label_is_excluded(example):
    logits, labels = example
    valid = labels != 255
    expected = _numpy_ce(logits, np.where(valid, labels, 0))[valid].mean()
    got = mean_pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    jitted = jax.jit(mean_pixel_cross_entropy)(logits, labels)
    assert float(jitted) == pytest.approx(expected, rel=1e-5)


def test_class_weights_match_weighted_mean(example):
    logits, labels = example
    weights = np.array([0.5, 2.0, 1.0], np.float32)
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    w = weights[safe] * valid
    expected = (w * _numpy_ce(logits, safe)).sum() / w.sum()
    total, weight_sum = pixel_cross_entropy(logits, labels, class_weights=weights)
    assert float(total / weight_sum) == pytest.approx(expected, rel=1e-5)
    assert float(weight_sum) == pytest.approx(w.sum())


def test_pixel_weights_multiply(example):
    logits, labels = example
    pixel_weights = np.random.default_rng(1).uniform(0.5, 3, labels.shape).astype(np.float32)
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    w = pixel_weights * valid
    expected = (w * _numpy_ce(logits, safe)).sum() / w.sum()
    got = mean_pixel_cross_entropy(logits, labels, pixel_weights=pixel_weights)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_wrong_class_weight_shape_is_an_error(example):
    logits, labels = example
    with pytest.raises(ValueError, match=r"class_weights has shape \(2,\); expected \(3,\)"):
        pixel_cross_entropy(logits, labels, class_weights=np.ones(2))


def test_gradient_is_finite_and_zero_on_ignored_pixels(example):
    logits, labels = example
    grads = jax.grad(mean_pixel_cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))
    assert np.isfinite(grads).all()
    np.testing.assert_array_equal(grads[labels == 255], 0)
    assert np.abs(grads[labels != 255]).sum() > 0


def test_all_ignored_gives_zero_loss_and_zero_gradient():
    logits = jnp.ones((1, 2, 2, 3))
    labels = jnp.full((1, 2, 2), 255)
    assert float(mean_pixel_cross_entropy(logits, labels)) == 0.0
    np.testing.assert_array_equal(jax.grad(mean_pixel_cross_entropy)(logits, labels), 0)


def test_dice_is_zero_for_perfect_confident_prediction():
    labels = jnp.array([[0, 1], [2, 255]])
    logits = jax.nn.one_hot(jnp.where(labels == 255, 0, labels), 3) * 100.0
    assert float(soft_dice_loss(logits[None], labels[None])) == pytest.approx(0.0, abs=1e-4)
    wrong = jnp.roll(logits, 1, axis=-1)
    assert float(soft_dice_loss(wrong[None], labels[None])) > 0.5


# --- The loss term registry (jaxseg/losses/__init__.py): every term against numpy written
# --- independently of it, under jit, with gradients checked against finite differences.

IGNORE = 255


def _np_softmax(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_focal(logits, labels, gamma, alpha=None, class_weights=None, pixel_weights=None):
    """(total, weight) by a loop over pixels."""
    probs = _np_softmax(logits)
    total = weight = 0.0
    for index in np.ndindex(labels.shape):
        y = labels[index]
        if y == IGNORE:
            continue
        p = probs[index][y]
        w = 1.0 if class_weights is None else class_weights[y]
        w *= 1.0 if pixel_weights is None else pixel_weights[index]
        a = 1.0 if alpha is None else (alpha[y] if np.ndim(alpha) else alpha)
        total += -w * a * (1 - p) ** gamma * np.log(p)
        weight += w
    return total, weight


def _np_class_mean(values, class_weights):
    weights = np.ones(len(values)) if class_weights is None else np.asarray(class_weights)
    return float(np.dot(weights, values) / weights.sum())


def _np_labelled(logits, labels):
    """(probabilities (P, C), labels (P,)) of the labelled pixels."""
    valid = labels != IGNORE
    return _np_softmax(logits)[valid], labels[valid]


def _np_dice(logits, labels, smooth=1.0, class_weights=None):
    probs, labels = _np_labelled(logits, labels)
    scores = []
    for c in range(probs.shape[1]):
        p, g = probs[:, c], (labels == c).astype(np.float64)
        scores.append(1 - (2 * np.sum(p * g) + smooth) / (np.sum(p) + np.sum(g) + smooth))
    return _np_class_mean(scores, class_weights)


def _np_tversky(logits, labels, alpha, beta, smooth=1.0, class_weights=None):
    probs, labels = _np_labelled(logits, labels)
    scores = []
    for c in range(probs.shape[1]):
        p, g = probs[:, c], (labels == c).astype(np.float64)
        tp, fp, fn = np.sum(p * g), np.sum(p * (1 - g)), np.sum((1 - p) * g)
        scores.append(1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
    return _np_class_mean(scores, class_weights)


def _np_lovasz_grad(gt_sorted):
    """Berman et al.'s `lovasz_grad`, one prefix at a time."""
    gts = gt_sorted.sum()
    jaccard = []
    for k in range(len(gt_sorted)):
        intersection = gts - gt_sorted[: k + 1].sum()
        union = gts + (1 - gt_sorted[: k + 1]).sum()
        jaccard.append(1 - intersection / union)
    return np.array([jaccard[0]] + [jaccard[k] - jaccard[k - 1] for k in range(1, len(jaccard))])


def _np_lovasz_softmax(logits, labels, classes="present", class_weights=None):
    """Berman et al.'s `lovasz_softmax_flat` on the labelled pixels of the batch."""
    probs, labels = _np_labelled(logits, labels)
    losses, weights = [], []
    for c in range(probs.shape[1]):
        fg = (labels == c).astype(np.float64)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = np.abs(fg - probs[:, c])
        perm = np.argsort(-errors, kind="stable")
        losses.append(np.dot(errors[perm], _np_lovasz_grad(fg[perm])))
        weights.append(1.0 if class_weights is None else class_weights[c])
    return float(np.dot(weights, losses) / np.sum(weights)) if losses else 0.0


@pytest.fixture
def batch():
    """(logits (2, 3, 4, 3), labels with ignored pixels, class 2 only on ignored pixels in
    `labels_missing_class`)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2.0, size=(2, 3, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 3, 4))
    labels[0, 0, :2] = IGNORE
    labels[1, 2, 3] = IGNORE
    missing = np.where(labels == 2, IGNORE, labels)
    return logits, labels, missing


def _value(term, logits, labels, **kwargs):
    """The loss value of a term, jitted."""

    @jax.jit
    def value(logits):
        return loss_value(*term(logits, labels, ignore_label=IGNORE, **kwargs))

    return float(value(jnp.asarray(logits)))


def test_registry_lists_the_six_terms_and_their_options():
    assert loss_names() == [
        "cross_entropy", "dice", "focal", "jaccard", "lovasz_softmax", "tversky",
    ]  # fmt: skip
    assert loss_options("focal") == {"gamma": 2.0, "alpha": None}
    assert loss_options("tversky") == {"alpha": 0.5, "beta": 0.5, "smooth": 1.0}
    assert loss_options("jaccard") == {"smooth": 1.0}
    assert loss_options("dice") == {"smooth": 1.0}
    assert loss_options("lovasz_softmax") == {"classes": "present"}
    assert loss_options("cross_entropy") == {}
    assert get_loss("cross_entropy") is pixel_cross_entropy


def test_unknown_loss_or_option_is_an_error_naming_what_is_allowed():
    with pytest.raises(ConfigError, match=r"unknown loss 'dcie'; available: \['cross_entropy'"):
        get_loss("dcie")
    with pytest.raises(ConfigError, match=r"'focal' has no option\(s\) \['gama'\].*'gamma'"):
        get_loss("focal", gama=1.0)


def test_register_loss_adds_a_user_term_and_refuses_a_duplicate(monkeypatch, batch):
    import jaxseg.losses

    registry = Registry("loss", {name: get_loss(name) for name in loss_names()})
    monkeypatch.setattr(jaxseg.losses, "LOSSES", registry)

    @register_loss("mean_probability")
    def mean_probability(logits, labels, *, ignore_label, class_weights=None,
                         pixel_weights=None, power=1.0):  # fmt: skip
        probs = jax.nn.softmax(logits) ** power
        return jnp.sum(probs[..., 0] * (labels != ignore_label)), jnp.sum(labels != ignore_label)

    assert "mean_probability" in loss_names()
    assert loss_options("mean_probability") == {"power": 1.0}
    logits, labels, _ = batch
    term = get_loss("mean_probability", power=2.0)
    expected = (_np_softmax(logits)[..., 0] ** 2)[labels != IGNORE].mean()
    assert _value(term, logits, labels) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="loss 'dice' is already registered"):
        register_loss("dice")(mean_probability)


def test_cross_entropy_term_matches_numpy(batch):
    logits, labels, _ = batch
    class_weights = np.array([0.5, 2.0, 1.0], np.float32)
    pixel_weights = np.random.default_rng(4).uniform(0.5, 2, labels.shape).astype(np.float32)
    total, weight = _np_focal(logits, labels, 0.0, None, class_weights, pixel_weights)
    term = get_loss("cross_entropy")
    got = _value(term, logits, labels, class_weights=class_weights, pixel_weights=pixel_weights)
    assert got == pytest.approx(total / weight, rel=1e-5)


@pytest.mark.parametrize(
    "gamma, alpha", [(2.0, None), (0.5, None), (2.0, 0.25), (1.0, (0.2, 0.5, 0.3))]
)
def test_focal_matches_numpy(batch, gamma, alpha):
    logits, labels, _ = batch
    class_weights = np.array([1.0, 3.0, 0.5], np.float32)
    pixel_weights = np.random.default_rng(5).uniform(0.5, 2, labels.shape).astype(np.float32)
    total, weight = _np_focal(logits, labels, gamma, alpha, class_weights, pixel_weights)
    term = get_loss("focal", gamma=gamma, alpha=alpha)
    got_total, got_weight = jax.jit(
        lambda x: term(
            x, labels, ignore_label=IGNORE, class_weights=class_weights, pixel_weights=pixel_weights
        )  # fmt: skip
    )(logits)
    assert got_total.dtype == got_weight.dtype == jnp.float32
    assert float(got_total) == pytest.approx(total, rel=1e-5)
    assert float(got_weight) == pytest.approx(weight, rel=1e-6)


def test_focal_with_gamma_0_is_cross_entropy(batch):
    logits, labels, _ = batch
    class_weights = np.array([0.5, 2.0, 1.0], np.float32)
    focal = focal_loss(logits, labels, ignore_label=IGNORE, gamma=0.0, class_weights=class_weights)
    ce = pixel_cross_entropy(logits, labels, IGNORE, class_weights)
    np.testing.assert_allclose(focal, ce, rtol=1e-6)
    grad_focal = jax.grad(lambda x: focal_loss(x, labels, ignore_label=IGNORE, gamma=0.0)[0])
    grad_ce = jax.grad(lambda x: pixel_cross_entropy(x, labels, IGNORE)[0])
    np.testing.assert_allclose(grad_focal(logits), grad_ce(logits), rtol=1e-5, atol=1e-7)


def test_focal_gradient_is_finite_for_saturated_predictions():
    logits = jnp.array([[[[200.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
    labels = jnp.array([[[0, 1]]])
    for gamma in (0.0, 0.5, 2.0):
        grads = jax.grad(lambda x, g=gamma: focal_loss(x, labels, ignore_label=IGNORE, gamma=g)[0])
        assert np.isfinite(grads(logits)).all(), gamma


@pytest.mark.parametrize("smooth", [1.0, 0.1])
def test_dice_matches_numpy_and_soft_dice_loss(batch, smooth):
    logits, labels, missing = batch
    for target in (labels, missing):
        expected = _np_dice(logits, target, smooth)
        assert _value(dice_loss, logits, target, smooth=smooth) == pytest.approx(expected, 1e-5)
        got = soft_dice_loss(logits, target, IGNORE, epsilon=smooth)
        assert float(got) == pytest.approx(expected, rel=1e-5)
    class_weights = np.array([1.0, 0.0, 3.0])
    expected = _np_dice(logits, labels, smooth, class_weights)
    got = _value(dice_loss, logits, labels, smooth=smooth, class_weights=class_weights)
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("alpha, beta", [(0.5, 0.5), (0.3, 0.7), (0.9, 0.1)])
def test_tversky_matches_numpy(batch, alpha, beta):
    logits, labels, missing = batch
    class_weights = np.array([2.0, 1.0, 0.5])
    for target in (labels, missing):
        expected = _np_tversky(logits, target, alpha, beta, 0.5, class_weights)
        term = get_loss("tversky", alpha=alpha, beta=beta, smooth=0.5)
        got = _value(term, logits, target, class_weights=class_weights)
        assert got == pytest.approx(expected, rel=1e-5)


def test_tversky_with_alpha_beta_one_half_is_dice(batch):
    logits, labels, _ = batch
    # Tversky (TP + s) / (TP + FP/2 + FN/2 + s) = Dice (2 TP + 2 s) / (|P| + |G| + 2 s).
    tversky = _value(tversky_loss, logits, labels, alpha=0.5, beta=0.5, smooth=0.5)
    assert tversky == pytest.approx(_value(dice_loss, logits, labels, smooth=1.0), rel=1e-6)
    tversky = _value(tversky_loss, logits, labels, alpha=0.5, beta=0.5, smooth=0.0)
    assert tversky == pytest.approx(_value(dice_loss, logits, labels, smooth=0.0), rel=1e-6)


def test_jaccard_is_soft_iou(batch):
    logits, labels, missing = batch
    for target in (labels, missing):
        expected = _np_tversky(logits, target, 1.0, 1.0, 1.0)
        assert _value(get_loss("jaccard"), logits, target) == pytest.approx(expected, rel=1e-5)
        got = _value(jaccard_loss, logits, target, smooth=0.25)
        assert got == pytest.approx(_value(tversky_loss, logits, target, alpha=1.0, beta=1.0,
                                           smooth=0.25), rel=1e-6)  # fmt: skip


def test_lovasz_softmax_by_hand():
    # Three labelled pixels (one ignored), two classes; p(class 1) = 0.2, 0.6, 0.7.
    # Class 0: fg 1 0 1, errors .2 .4 .7, sorted .7(fg) .4 .2(fg): Jaccard 1/2 2/3 1,
    # gradient 1/2 1/6 1/3, loss .35 + .4/6 + .2/3 = 29/60.
    # Class 1: fg 0 1 0, errors .2 .4 .7, sorted .7 .4(fg) .2: Jaccard 1/2 1 1, loss 33/60.
    p1 = np.array([0.2, 0.6, 0.7, 0.5])
    logits = np.log(np.stack([1 - p1, p1], -1)).reshape(1, 1, 4, 2).astype(np.float32)
    labels = np.array([[[0, 1, 0, IGNORE]]])
    assert _np_lovasz_softmax(logits, labels) == pytest.approx(31 / 60)
    assert _value(lovasz_softmax_loss, logits, labels) == pytest.approx(31 / 60, rel=1e-6)
    assert _value(lovasz_softmax_loss, logits, labels, class_weights=np.array([0.0, 1.0])) == (
        pytest.approx(33 / 60, rel=1e-6)
    )


@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_softmax_matches_numpy(batch, classes):
    logits, labels, missing = batch
    class_weights = np.array([1.0, 2.0, 0.5])
    for target in (labels, missing):
        for weights in (None, class_weights):
            expected = _np_lovasz_softmax(logits, target, classes, weights)
            term = get_loss("lovasz_softmax", classes=classes)
            got = _value(term, logits, target, class_weights=weights)
            assert got == pytest.approx(expected, rel=1e-5)
    # Class 2 is absent from `missing`: "present" leaves it out, "all" counts it.
    present = _value(lovasz_softmax_loss, logits, missing, classes="present")
    assert present != pytest.approx(_value(lovasz_softmax_loss, logits, missing, classes="all"))


TERMS = [
    ("cross_entropy", {}),
    ("focal", {"gamma": 2.0, "alpha": (0.2, 0.5, 0.3)}),
    ("dice", {}),
    ("tversky", {"alpha": 0.3, "beta": 0.7}),
    ("jaccard", {}),
    ("lovasz_softmax", {}),
    ("lovasz_softmax", {"classes": "all"}),
]


@pytest.mark.parametrize("name, options", TERMS)
def test_gradients_match_finite_differences(name, options):
    rng = np.random.default_rng(6)
    labels = np.array([[[0, 1, IGNORE], [2, 2, 0]]])
    term = get_loss(name, **options)
    with jax.enable_x64(True):
        logits = jnp.asarray(rng.normal(size=(1, 2, 3, 3)), jnp.float64)
        class_weights = jnp.array([1.0, 2.0, 0.5], jnp.float64)

        @jax.jit
        def loss(logits):
            return loss_value(
                *term(logits, labels, ignore_label=IGNORE, class_weights=class_weights)
            )

        assert loss(logits).dtype == jnp.float64
        check_grads(loss, (logits,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name, options", TERMS)
def test_ignored_pixels_get_zero_gradient(batch, name, options):
    logits, labels, _ = batch
    term = get_loss(name, **options)
    grads = jax.jit(jax.grad(lambda x: loss_value(*term(x, labels, ignore_label=IGNORE))))(
        jnp.asarray(logits)
    )
    assert np.isfinite(grads).all()
    np.testing.assert_array_equal(grads[labels == IGNORE], 0)
    assert np.abs(grads[labels != IGNORE]).sum() > 0


@pytest.mark.parametrize("name, options", TERMS)
def test_all_ignored_batch_gives_finite_loss_and_zero_gradient(name, options):
    logits = jnp.ones((1, 2, 2, 3))
    labels = jnp.full((1, 2, 2), IGNORE)
    term = get_loss(name, **options)

    def loss(x):
        return loss_value(*term(x, labels, ignore_label=IGNORE))

    assert np.isfinite(float(jax.jit(loss)(logits)))
    np.testing.assert_array_equal(jax.grad(loss)(logits), 0)


@pytest.mark.parametrize("name, options", TERMS)
def test_low_precision_logits_are_computed_in_float32(batch, name, options):
    logits, labels, _ = batch
    term = get_loss(name, **options)
    low = term(jnp.asarray(logits, jnp.bfloat16), labels, ignore_label=IGNORE)
    assert all(x.dtype == jnp.float32 and x.shape == () for x in low)
    rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float32)
    np.testing.assert_allclose(low, term(rounded, labels, ignore_label=IGNORE), rtol=1e-6)


@pytest.mark.parametrize("name", ["dice", "tversky", "jaccard", "lovasz_softmax"])
def test_set_level_terms_refuse_pixel_weights(batch, name):
    logits, labels, _ = batch
    with pytest.raises(ValueError, match=f"loss '{name}' is a set-level term.*no pixel_weights"):
        get_loss(name)(logits, labels, ignore_label=IGNORE, pixel_weights=np.ones(labels.shape))


def test_bad_options_and_weights_are_errors(batch):
    logits, labels, _ = batch
    with pytest.raises(ValueError, match="classes must be 'present' or 'all'; got 'some'"):
        lovasz_softmax_loss(logits, labels, ignore_label=IGNORE, classes="some")
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        focal_loss(logits, labels, ignore_label=IGNORE, gamma=-1.0)
    with pytest.raises(ValueError, match=r"focal alpha has shape \(2,\)"):
        focal_loss(logits, labels, ignore_label=IGNORE, alpha=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"class_weights has shape \(2,\); expected \(3,\)"):
        dice_loss(logits, labels, ignore_label=IGNORE, class_weights=np.ones(2))
    with pytest.raises(ValueError, match=r"pixel_weights has shape \(3, 4\)"):
        focal_loss(logits, labels, ignore_label=IGNORE, pixel_weights=np.ones((3, 4)))


def test_at_labels_picks_what_take_along_axis_picks():
    rng = np.random.default_rng(7)
    values = jnp.asarray(rng.normal(size=(2, 5, 4, 6)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 6, (2, 5, 4)), jnp.int32)
    want = jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]
    np.testing.assert_array_equal(at_labels(values, labels), want)


@pytest.mark.parametrize("term", ["cross_entropy", "focal"])
def test_pixel_term_gradient_has_no_scatter(term):
    """The label's score is picked by a one-hot sum: its gradient is elementwise, where
    `take_along_axis`'s is a scatter."""
    logits = jnp.zeros((2, 8, 8, 5))
    labels = jnp.zeros((2, 8, 8), jnp.int32)
    loss = get_loss(term)

    def mean_loss(logits):
        return loss_value(*loss(logits, labels, ignore_label=255))

    text = jax.jit(jax.grad(mean_loss)).lower(logits).compile().as_text()
    assert " scatter(" not in text
