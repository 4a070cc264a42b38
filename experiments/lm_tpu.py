r"""A GPT-2-small-shaped byte-level LM on tfds lm1b, sized for a Cloud TPU slice or a multi-GPU host.

12 layers, d=768, 12 heads, MLP 3072 (~85M parameters in the blocks), bf16 compute with float32
parameters and AdamW state, blocks rematerialised, parameters and optimizer state FSDP-sharded over
4 chips and the batch over the rest. On every worker of a v4-32 / v5litepod-16 (see docs/tpu.md):

  maasjax train --config experiments/lm_tpu.py --workdir /mnt/runs/lm_tpu \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Other layouts are overrides, e.g. tensor parallel over 4 chips of each host, data parallel across:
  --config.mesh.fsdp=1 --config.mesh.model=4 --config.sharding.preset=tensor
and on one 8-GPU host (docs/gpu.md): --config.mesh.fsdp=8 --config.batch_size=256.

Not run here: this machine has no TPU and no lm1b. Its sharding, bf16 and restore paths are tested on
8 simulated CPU devices with this config shrunk (tests/mesh_worker.py); record the measured result and
the hardware here when it is run.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({
      'name': 'transformer_lm', 'num_layers': 12, 'num_heads': 12, 'emb_dim': 768, 'mlp_dim': 3072,
      'dropout': 0.0, 'attention_dropout': 0.0, 'positions': 'rotary', 'max_len': 512, 'remat': True})
  c.dataset = ml_collections.ConfigDict({
      'name': 'lm1b', 'data_dir': '', 'download': False, 'seq_len': 256, 'shuffle_buffer': 100_000,
      'eval_examples': 8192})
  c.dtype = 'bfloat16'
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 4, 'model': 1})
  c.sharding.preset = 'fsdp'
  c.batch_size = 512  # global: 32 sequences per chip on 16 chips
  c.eval_batch_size = 512
  c.num_train_steps = 50_000
  c.optimizer.learning_rate = 6e-4
  c.optimizer.warmup_steps = 2_000
  c.optimizer.weight_decay = 0.1
  c.optimizer.b2 = 0.95
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 100
  c.eval_every_steps = 2_000
  c.checkpoint.every_steps = 2_000
  c.checkpoint.keep = 3
  return c
