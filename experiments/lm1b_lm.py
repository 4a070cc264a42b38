r"""Byte-level Transformer LM on tfds lm1b (the One Billion Word benchmark), as the Flax lm1b example.

  python -m tensorflow_datasets.scripts.download_and_prepare --datasets=lm1b --data_dir=DATA \
      --file_format=array_record
  maasjax train --config experiments/lm1b_lm.py --workdir runs/lm1b_lm --config.dataset.data_dir=DATA

Each sentence is [BOS] UTF-8 bytes [EOS], cut to seq_len + 1 tokens (no tokenizer to train; vocabulary
259). The training stream is a pure function of (seed, step): from ArrayRecord files each batch is read by
index (a resume is O(1)); from TFRecord files (tfds's default) shards are read in a seeded order with
blocks of `shuffle_buffer` sentences permuted, and a resume seeks to its shard and offset (at most one
shard plus one block read). lm1b has no validation split, so periodic evaluation reads the first
`eval_examples` test sentences and the final test metric the whole test split. Not run on this machine
(a 1.7 GB download); the pipeline and a few training steps are tested under tfds mock data.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({
      'name': 'transformer_lm', 'num_layers': 6, 'num_heads': 8, 'emb_dim': 512, 'mlp_dim': 2048,
      'dropout': 0.1, 'attention_dropout': 0.0, 'positions': 'rotary', 'max_len': 512,
      'attention_window': 0, 'remat': False})
  c.dataset = ml_collections.ConfigDict({
      'name': 'lm1b', 'data_dir': '', 'download': False, 'seq_len': 256, 'shuffle_buffer': 10_000,
      'eval_examples': 2048})
  c.dtype = 'bfloat16'
  c.batch_size = 64
  c.eval_batch_size = 64
  c.num_train_steps = 100_000
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 1000
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 100
  c.eval_every_steps = 2000
  c.checkpoint.every_steps = 2000
  return c
