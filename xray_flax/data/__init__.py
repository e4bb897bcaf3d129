"""Input pipeline: readers, layouts, tiling, Grain pipelines, simulator, TFDS builder.

See docs/data.md. The entry points most code needs:
  pipeline.prepare_splits, pipeline.make_train_iterator, pipeline.iterate_eval_batches,
  pipeline.count_tiles, readers.open_scan, readers.read_mask, config.defaults.
"""

from xray_flax.data.readers import (  # noqa: F401
    CsvLabelError,
    DataError,
    DataValidationError,
    EmptySplitError,
    ImageTooSmallError,
    LayoutError,
    MaskShapeError,
    NonFiniteImageError,
    UnreadableImageError,
    UnsupportedImageError,
)
