"""Figures a run writes: prediction grids, training curves, confusion matrices (PNG).

Panels of images and masks are drawn pixel for pixel (`figimage`, integer
upscaling, no interpolation), so what a grid shows is exactly the data; the
text around them is matplotlib's.
"""

import io

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from jaxseg.data.info import IGNORE_COLOUR  # noqa: E402

DPI = 100


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def prediction_grid(images, labels, predictions, info, title: str = "") -> tuple[bytes, dict]:
    """A PNG of rows image | ground truth | prediction, with a legend of the classes.

    Args:
      images: (N, H, W, 3) uint8; labels, predictions: (N, H, W) class indices.
      info: the dataset's SegmentationInfo (palette, class names, ignore label).
      title: printed above the grid.

    Returns:
      (png bytes, layout): layout["scale"] is the integer upscaling and
      layout["panels"][row][column] the (top, left) pixel of each panel.
    """
    count, height, width = labels.shape
    scale = max(1, min(8, 160 // max(height, width)))  # panels ~160 px or more
    panel_h, panel_w = height * scale, width * scale
    gap, margin_left, header, legend_h = 8, 16, 44 + (18 if title else 0), 64
    canvas_w = margin_left * 2 + 3 * panel_w + 2 * gap
    canvas_h = header + count * panel_h + (count - 1) * gap + legend_h
    figure = plt.figure(figsize=(canvas_w / DPI, canvas_h / DPI), dpi=DPI)
    palette = info.palette
    panels = []
    for row in range(count):
        top = header + row * (panel_h + gap)
        row_panels = []
        columns = (
            images[row],
            info.colourize(labels[row]),
            info.colourize(predictions[row]),
        )
        for column, panel in enumerate(columns):
            left = margin_left + column * (panel_w + gap)
            # figimage's origin is the bottom-left corner of the figure.
            figure.figimage(
                _upscale(np.asarray(panel, np.uint8), scale),
                xo=left,
                yo=canvas_h - top - panel_h,
                origin="upper",
            )
            row_panels.append((top, left))
        panels.append(row_panels)
    if title:
        figure.text(0.5, 1 - 12 / canvas_h, title, ha="center", va="top", fontsize=11)
    for column, name in enumerate(("image", "ground truth", "prediction")):
        centre = margin_left + column * (panel_w + gap) + panel_w / 2
        figure.text(
            centre / canvas_w, 1 - (header - 8) / canvas_h, name, ha="center", va="bottom",
            fontsize=11, fontweight="bold",
        )  # fmt: skip
    handles = [
        Patch(facecolor=np.asarray(colour) / 255, edgecolor="black", linewidth=0.5, label=name)
        for name, colour in zip(info.class_names, palette)
    ] + [Patch(facecolor=np.asarray(IGNORE_COLOUR) / 255, label="ignored")]
    figure.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), max(1, canvas_w // 110)),
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    return _png(figure), {"scale": scale, "panels": panels}


def training_curves(records: list[dict], eval_split: str, title: str = "") -> bytes:
    """A PNG of the training loss and the `eval_split` mIoU against the step."""
    train = [r for r in records if r["split"] == "train" and r.get("loss") is not None]
    evaluated = [r for r in records if r["split"] == eval_split and r.get("miou") is not None]
    figure, (loss_axes, miou_axes) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=DPI)
    if train:
        loss_axes.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue")
    loss_axes.set(xlabel="step", ylabel="loss", title="Training loss")
    losses = [r["loss"] for r in train]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        loss_axes.set_yscale("log")  # a loss falling by orders of magnitude
        loss_axes.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    if evaluated:
        steps = [r["step"] for r in evaluated]
        miou_axes.plot(steps, [r["miou"] for r in evaluated], marker="o", color="tab:green")
        for step, record in zip(steps, evaluated):
            miou_axes.annotate(
                f"{record['miou']:.3f}", (step, record["miou"]), textcoords="offset points",
                xytext=(0, 6), ha="center", fontsize=8,
            )  # fmt: skip
    miou_axes.set(
        xlabel="step", ylabel="mean IoU", title=f"{eval_split.capitalize()} mean IoU", ylim=(0, 1)
    )
    for axes in (loss_axes, miou_axes):
        axes.grid(True, alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return _png(figure)


def confusion_heatmap(confusion: np.ndarray, class_names, title: str = "") -> bytes:
    """A PNG of the confusion matrix normalised per true class (rows sum to 1)."""
    confusion = np.asarray(confusion, np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(totals > 0, confusion / totals, np.nan)
    count = len(class_names)
    side = min(14.0, 2.5 + 0.45 * count)
    figure, axes = plt.subplots(figsize=(side + 1.2, side), dpi=DPI)
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    axes.set_xticks(range(count), class_names, rotation=45, ha="right")
    axes.set_yticks(range(count), class_names)
    axes.set(xlabel="predicted class", ylabel="true class", title=title or "Confusion matrix")
    if count <= 20:
        for row in range(count):
            for column in range(count):
                value = normalised[row, column]
                if np.isfinite(value):
                    axes.text(
                        column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if value > 0.5 else "black",
                    )  # fmt: skip
    figure.tight_layout()
    return _png(figure)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()
