"""Score normalisation: unbounded anomaly maps onto the scale that thresholds and colours expect.

Flow log-likelihoods, feature distances and reconstruction errors have no natural cut. Like
anomalib's post-processor, maps are normalised before thresholds, regions and colour scales,
but from the validation split's *normal* tiles only (no anomalies are needed):

    normalised = 0.5 * (raw - centre) / (upper - centre)

`centre` is the median over normal tiles of each tile's median pixel (the typical normal
background maps to 0) and `upper` the `quantile` of the normal tiles' image scores (the
highest score a normal tile gets maps to 0.5, so the fixed threshold 0.5 flags what scores
above normal data). The map is affine in the raw one, so rankings (ROC-AUC) do not change,
and a map multiplied by any positive factor normalises to the same values. Detectors whose
maps are already probabilities with their cut at 0.5 (DRAEM's softmax) get the identity.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xray_flax import config_rules, errors

IDENTITY_RULE = "identity"
NORMAL_QUANTILE_RULE = "normal_quantile"


@dataclasses.dataclass(frozen=True)
class ScoreNormalization:
    """normalised = (raw - shift) * scale; stored with the best checkpoint."""

    shift: float = 0.0
    scale: float = 1.0
    rule: str = IDENTITY_RULE

    def apply(self, values):
        return (values - self.shift) * self.scale

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict) -> ScoreNormalization:
        return ScoreNormalization(float(d["shift"]), float(d["scale"]), str(d["rule"]))


IDENTITY = ScoreNormalization()


def fit(normal_tile_medians: np.ndarray, normal_scores: np.ndarray, quantile: float) -> ScoreNormalization:
    """The normalisation of the module docstring from raw statistics of normal validation tiles.

    Args:
      normal_tile_medians: [n] median pixel of each normal tile's raw map.
      normal_scores: [n] raw image scores of the same tiles.
      quantile: in (0, 1]; 1 = the maximum normal score maps to 0.5.
    """
    medians = np.asarray(normal_tile_medians, np.float64)
    scores = np.asarray(normal_scores, np.float64)
    if medians.size == 0 or scores.size == 0:
        raise errors.ConfigError(
            "score normalisation needs normal tiles in the validation split (none found); "
            "set config.data.split_fractions so that val has normal images, or "
            "config.eval.normalization='none'"
        )
    errors.require(config_rules.number("config.eval.normalization_quantile", quantile, 0, 1, low_open=True))
    if not (np.all(np.isfinite(medians)) and np.all(np.isfinite(scores))):
        raise ValueError("non-finite anomaly maps on validation normal tiles: cannot fit the score normalisation")
    centre = float(np.median(medians))
    upper = float(np.quantile(scores, quantile))
    # A constant map (e.g. an untrained model) has no spread: fall back to a unit spread
    # rather than dividing by zero; the scores then keep their raw spacing.
    spread = upper - centre
    if not spread > 1e-12 * max(1.0, abs(centre)):
        spread = 1.0
    return ScoreNormalization(shift=centre, scale=0.5 / spread, rule=NORMAL_QUANTILE_RULE)
