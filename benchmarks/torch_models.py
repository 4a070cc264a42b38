"""PyTorch twins of maasjax's MNIST CNN, small ResNet and Transformer LM, for benchmarks/train_step.py.

Same layers, shapes and activations as maasjax/models/{cnn,resnet,transformer}.py, written the way a
PyTorch user would (NCHW convs, SDPA attention). `load_from_flax` copies a flax parameter tree into the
twin, so both frameworks start from the same weights (same init scale by construction) and their first
losses can be compared.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))


def _conv(module: nn.Conv2d, flax_conv: dict) -> None:
  module.weight.data.copy_(_t(flax_conv['kernel']).permute(3, 2, 0, 1))  # HWIO -> OIHW
  if module.bias is not None:
    module.bias.data.copy_(_t(flax_conv['bias']))


def _dense(module: nn.Linear, flax_dense: dict) -> None:
  module.weight.data.copy_(_t(flax_dense['kernel']).T)
  module.bias.data.copy_(_t(flax_dense['bias']))


def _norm(module, flax_norm: dict) -> None:
  module.weight.data.copy_(_t(flax_norm['scale']))
  module.bias.data.copy_(_t(flax_norm['bias']))


class Preprocess(nn.Module):
  """uint8 NCHW -> float (x - mean) / std, as maasjax's Classification task does inside its step."""

  def __init__(self, mean, std):
    super().__init__()
    self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

  def forward(self, x):
    return (x.float() - self.mean) / self.std


class CNN(nn.Module):
  """conv 32 -> relu -> avgpool -> conv 64 -> relu -> avgpool -> dense 256 -> relu -> dense classes."""

  def __init__(self, in_channels, size, mean, std, features=(32, 64), dense=256, num_classes=10):
    super().__init__()
    self.pre = Preprocess(mean, std)
    chans = (in_channels,) + tuple(features)
    self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:]))
    side = size // 2 ** len(features)
    self.side, self.channels = side, chans[-1]
    self.fc1 = nn.Linear(side * side * chans[-1], dense)
    self.fc2 = nn.Linear(dense, num_classes)

  def forward(self, x):
    h = self.pre(x)
    for conv in self.convs:
      h = F.avg_pool2d(F.relu(conv(h)), 2)
    return self.fc2(F.relu(self.fc1(h.flatten(1))))

  def load_from_flax(self, params):
    for i, conv in enumerate(self.convs):
      _conv(conv, params[f'Conv_{i}'])
    # flax flattens (H, W, C); torch flattens (C, H, W): reorder the first dense layer's rows.
    kernel = np.asarray(params['Dense_0']['kernel']).reshape(self.side, self.side, self.channels, -1)
    kernel = kernel.transpose(2, 0, 1, 3).reshape(-1, kernel.shape[-1])
    _dense(self.fc1, {'kernel': kernel, 'bias': params['Dense_0']['bias']})
    _dense(self.fc2, params['Dense_1'])


def _bn(features, zero_scale=False):
  bn = nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)  # flax momentum 0.9 = torch momentum 0.1
  if zero_scale:
    nn.init.zeros_(bn.weight)
  return bn


class ResidualBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
    self.bn1 = _bn(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
    self.bn2 = _bn(cout, zero_scale=True)
    self.proj = None
    if cin != cout or stride != 1:
      self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu((x if self.proj is None else self.proj(x)) + y)

  def load_from_flax(self, p):
    _conv(self.conv1, p['Conv_0'])
    _norm(self.bn1, p['BatchNorm_0'])
    _conv(self.conv2, p['Conv_1'])
    _norm(self.bn2, p['BatchNorm_1'])
    if self.proj is not None:
      _conv(self.proj[0], p['proj_conv'])
      _norm(self.proj[1], p['proj_norm'])


class ResNet(nn.Module):
  def __init__(self, in_channels, mean, std, stage_sizes=(2, 2, 2), width=16, num_classes=10):
    super().__init__()
    self.pre = Preprocess(mean, std)
    self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
    self.stem_bn = _bn(width)
    blocks, cin = [], width
    for stage, n in enumerate(stage_sizes):
      for b in range(n):
        cout = width * 2 ** stage
        blocks.append(ResidualBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
        cin = cout
    self.blocks = nn.ModuleList(blocks)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    h = F.relu(self.stem_bn(self.stem(self.pre(x))))
    for block in self.blocks:
      h = block(h)
    return self.head(h.mean(dim=(2, 3)))

  def load_from_flax(self, params):
    _conv(self.stem, params['stem_conv'])
    _norm(self.stem_bn, params['stem_norm'])
    for i, block in enumerate(self.blocks):
      block.load_from_flax(params[f'ResidualBlock_{i}'])
    _dense(self.head, params['head'])


def rotate(x_BxLxHxK, positions_L, base=10000.0):
  """Rotary embedding exactly as maasjax.models.transformer.rotate."""
  half = x_BxLxHxK.shape[-1] // 2
  freqs_K = base ** (-torch.arange(half, dtype=torch.float32) / half)
  angles_LxK = positions_L.float()[:, None] * freqs_K[None, :]
  sin, cos = angles_LxK.sin()[None, :, None, :], angles_LxK.cos()[None, :, None, :]
  x1, x2 = x_BxLxHxK[..., :half], x_BxLxHxK[..., half:]
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
  """Pre-LN block: causal self-attention (q/k/v/out with biases, rotary) and a tanh-GELU MLP."""

  def __init__(self, d, heads, mlp):
    super().__init__()
    self.heads = heads
    self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)  # flax's epsilon
    self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
    self.wi, self.wo = nn.Linear(d, mlp), nn.Linear(mlp, d)

  def forward(self, x_BxLxD, positions_L):
    b, length, d = x_BxLxD.shape
    h = self.ln1(x_BxLxD)
    split = lambda t: t.view(b, length, self.heads, d // self.heads)
    q = rotate(split(self.q(h)), positions_L).transpose(1, 2)
    k = rotate(split(self.k(h)), positions_L).transpose(1, 2)
    v = split(self.v(h)).transpose(1, 2)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x_BxLxD = x_BxLxD + self.o(a.transpose(1, 2).reshape(b, length, d))
    return x_BxLxD + self.wo(F.gelu(self.wi(self.ln2(x_BxLxD)), approximate='tanh'))

  def load_from_flax(self, p):
    a = p['attention']
    for mod, name in ((self.q, 'query'), (self.k, 'key'), (self.v, 'value')):
      kernel = np.asarray(a[name]['kernel'])  # (D, H, K)
      _dense(mod, {'kernel': kernel.reshape(kernel.shape[0], -1), 'bias': np.asarray(a[name]['bias']).reshape(-1)})
    out = np.asarray(a['out']['kernel'])  # (H, K, D)
    _dense(self.o, {'kernel': out.reshape(-1, out.shape[-1]), 'bias': a['out']['bias']})
    _norm(self.ln1, p['pre_attention_norm'])
    _norm(self.ln2, p['pre_mlp_norm'])
    _dense(self.wi, p['mlp']['wi'])
    _dense(self.wo, p['mlp']['wo'])


class DecoderLM(nn.Module):
  def __init__(self, vocab, layers, d, heads, mlp):
    super().__init__()
    self.embed = nn.Embedding(vocab, d)
    self.blocks = nn.ModuleList(Block(d, heads, mlp) for _ in range(layers))
    self.final_norm = nn.LayerNorm(d, eps=1e-6)
    self.logits = nn.Linear(d, vocab)

  def forward(self, tokens_BxL):
    positions_L = torch.arange(tokens_BxL.shape[1])  # no padding in the benchmark's random tokens
    h = self.embed(tokens_BxL)
    for block in self.blocks:
      h = block(h, positions_L)
    return self.logits(self.final_norm(h))

  def load_from_flax(self, params):
    p = params['decoder']
    self.embed.weight.data.copy_(_t(p['embed']['embedding']))
    for i, block in enumerate(self.blocks):
      block.load_from_flax(p[f'layers_{i}'])
    _norm(self.final_norm, p['final_norm'])
    _dense(self.logits, params['logits'])
