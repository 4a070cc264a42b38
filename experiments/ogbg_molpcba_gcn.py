r"""ogbg_molpcba (tfds): a GCN predicts 128 bioassay outcomes per molecule, as in the Flax ogbg example.

  python -m tensorflow_datasets.scripts.download_and_prepare --datasets=ogbg_molpcba --data_dir=DATA
  maasjax train --config experiments/ogbg_molpcba_gcn.py --workdir runs/ogbg_molpcba_gcn \
      --config.dataset.data_dir=DATA

Multi-label: masked sigmoid cross-entropy over the measured assays; the metric is mean average
precision over the assays with both outcomes in the split (computed on the whole split, not averaged
over batches). Batches of 256 molecules are padded to power-of-two node/edge buckets.
Not run on this machine (the dataset needs a download); the pipeline is tested under tfds mock data.
For scale only, not measured here: OGB's published GCN baseline on this dataset is about 0.20 test AP.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({
      'name': 'gcn', 'hidden': (256, 256, 256, 256), 'embed_dim': 256, 'dropout': 0.1, 'readout': 'mean'})
  c.dataset = ml_collections.ConfigDict({
      'name': 'ogbg_molpcba', 'data_dir': '', 'download': False, 'min_bucket_nodes': 4096,
      'min_bucket_edges': 8192})
  c.batch_size = 256
  c.eval_batch_size = 1024
  c.num_train_steps = 100_000
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 1000
  c.optimizer.weight_decay = 0.0
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.checkpoint.every_steps = 5000
  return c
