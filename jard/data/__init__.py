"""Data: sources (tfds, npz, folder, radio), host batching, augmentation."""

from jard.data.augment import augment
from jard.data.augment import to_float
from jard.data.pipeline import epoch_permutation
from jard.data.pipeline import eval_batches
from jard.data.pipeline import eval_indices
from jard.data.pipeline import steps_per_epoch
from jard.data.pipeline import train_batches
from jard.data.sources import DataError
from jard.data.sources import ImageDataset
from jard.data.sources import is_radio_config
from jard.data.sources import is_radio_spec
from jard.data.sources import load
from jard.data.sources import validate
