"""The tiling and test-time augmentation flags that `jaxseg predict` and `jaxseg evaluate`
share, defined once; only what an absent --tile means differs (predict: "auto", images
within one ~512x512 tile whole and larger ones tiled; evaluate: whole images, as training
evaluates)."""

from typing import NamedTuple

from absl import flags

from jaxseg.inference.files import parse_scales, parse_tile


class PredictionFlags(NamedTuple):
    tile: flags.FlagHolder
    overlap: flags.FlagHolder
    tta: flags.FlagHolder
    scales: flags.FlagHolder

    def parsed_tile(self):
        """(H, W), None for "0" (whole images), or None when --tile is absent."""
        return parse_tile(self.tile.value) if self.tile.value else None

    def options(self) -> dict:
        """overlap, flip and scales as the Predictor takes them."""
        return dict(
            overlap=self.overlap.value,
            flip=self.tta.value,
            scales=parse_scales(self.scales.value),
        )


def define_prediction_flags(tile_default_help: str) -> PredictionFlags:
    return PredictionFlags(
        tile=flags.DEFINE_string("tile", None, f"H,W of the tiles ({tile_default_help})."),
        overlap=flags.DEFINE_float(
            "overlap", None, "Fraction of a tile its neighbours share (0.25)."
        ),
        tta=flags.DEFINE_bool("tta", False, "Average with the horizontally flipped prediction."),
        scales=flags.DEFINE_list(
            "scales", ["1"], "Scales averaged (multi-scale TTA), e.g. 0.75,1,1.25."
        ),
    )
