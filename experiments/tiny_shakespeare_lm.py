r"""Character-level Transformer LM on tfds tiny_shakespeare (about 1 MB of Shakespeare's plays).

  python -m tensorflow_datasets.scripts.download_and_prepare --datasets=tiny_shakespeare --data_dir=DATA
  maasjax train --config experiments/tiny_shakespeare_lm.py --workdir runs/tiny_shakespeare_lm \
      --config.dataset.data_dir=DATA
  maasjax generate --workdir runs/tiny_shakespeare_lm --prompt "ROMEO:" --max-new-tokens 300

tfds's own train / validation / test texts. Not run on this machine (the dataset needs a download);
the pipeline and a few training steps are tested under tfds mock data. The same model reaches a
validation loss of 1.22 nats/char on the 44 KB default text of experiments/char_lm.py.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({
      'name': 'transformer_lm', 'num_layers': 6, 'num_heads': 8, 'emb_dim': 256, 'mlp_dim': 1024,
      'dropout': 0.1, 'attention_dropout': 0.0, 'positions': 'rotary', 'max_len': 1024,
      'attention_window': 256, 'remat': False})
  c.dataset = ml_collections.ConfigDict({'name': 'tiny_shakespeare', 'data_dir': '', 'download': False,
                                         'seq_len': 256})
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_train_steps = 5000
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 200
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint.every_steps = 1000
  return c
