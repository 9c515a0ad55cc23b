"""The context module: what runs over the utterances of each window, after
the per-utterance fusion and before the heads (DESIGN section 3), a
Transformer with a relative-position bias or a bidirectional GRU, with a
speaker embedding (`Context`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mcur_jax import attention
from mcur_jax import groups

# config.context_position_init: the initial relative-position bias of the
# context Transformer. "zero": no preference; "recency": ALiBi's slopes
# (Press et al. 2022), head h of H starts at -2^(-8(h+1)/H) per step of
# distance, so the heads start from local (the nearest utterances) to
# nearly uniform (the window's mean). The bias is learned either way.
POSITION_INITS = ("zero", "recency")
# config.context_kind: what runs over the utterances of a window.
# "transformer": DESIGN section 3's pre-LN Transformer (attention masked to
# the window, relative-position bias); "gru": bidirectional GRU layers over
# the window in rank order (order is its position information; the
# prototype of peers.md section 9 used one).
CONTEXT_KINDS = ("transformer", "gru")


class BiGRU(nnx.Module):
  """Pre-LN residual bidirectional GRU layer over runs of a sequence:
  x + Dropout(Dense([forward GRU; backward GRU](LN(x)))).

  Each direction is the standard GRU cell (Cho et al. 2014, PyTorch's
  form: the reset gate scales the hidden projection, its bias included);
  the state restarts from 0 where a run begins (`start` in the forward
  direction, `end` in the backward one), so no run reads another. The
  input projections are one matmul over the whole sequence (in the
  compute dtype); only the hidden projection is sequential (float32).
  """

  def __init__(self, dim: int, dropout: float, *, rngs, dtype=None):
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.inputs = nnx.List([nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
                            for _ in range(2)])
    self.hidden = nnx.List([nnx.Linear(dim, 3 * dim, rngs=rngs)
                            for _ in range(2)])
    self.out = nnx.Linear(2 * dim, dim, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(dropout)

  def __call__(self, x, start, end, rngs):
    """x [T, D]; start, end [T] bool (a run begins, ends at this row)."""
    y = self.norm(x)
    forward = self.direction(0, y, start)
    backward = self.direction(1, y[::-1], end[::-1])[::-1]
    out = self.out(jnp.concatenate([forward, backward], -1))
    return x + self.drop(out, deterministic=rngs is None, rngs=rngs)

  def direction(self, i: int, y, reset):
    """The GRU states of direction `i` over y [T, D], restarting at `reset`."""
    xr, xz, xn = jnp.split(self.inputs[i](y).astype(jnp.float32), 3, -1)
    kernel, bias = self.hidden[i].kernel[...], self.hidden[i].bias[...]

    def step(h, row):
      xr, xz, xn, restart = row
      h = jnp.where(restart, 0.0, h)
      hr, hz, hn = jnp.split(h @ kernel + bias, 3, -1)
      r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
      h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
      return h, h

    h0 = jnp.zeros(y.shape[-1], jnp.float32)
    return jax.lax.scan(step, h0, (xr, xz, xn, reset))[1]


class Context(nnx.Module):
  """The context module over the utterances of windows.

  Adds a learned embedding of each utterance's speaker rank (speakers past
  `num_speakers` - 1 share the last row), then, by `kind`:
  "transformer": pre-LN blocks whose attention is masked to the same
  window and biased per head by the learned bias of the clipped rank
  distance j - i (`max_distance` 0: no position information; initialised
  by `position_init`, POSITION_INITS); "gru": pre-LN residual
  bidirectional GRU layers over each window in rank order (`recurrent`;
  the order is its position information, and `num_heads`, `max_distance`,
  `position_init` and `window` go unused). Then a LayerNorm.

  For the Transformer every window is a contiguous run of at most
  `window` positions of the batch, padding never inside it
  (`groups.train_plan` and `groups.EvalLayout` lay them out so; a caller
  of `apply` must too), so on a batch longer than 3 * `window` the
  attention is block-local (`attention.SelfAttention`'s `block`): each
  position sees the keys within `window` of its block, which hold its whole
  window, at a cost linear in the batch instead of quadratic (IEMOCAP's
  evaluation chunks hold 512 window slots). The keys it leaves out are
  masked anyway, so the outputs are those of whole-batch attention up to
  float rounding. `window` 0: always whole-batch.
  """

  def __init__(self, dim: int, num_layers: int, num_heads: int,
               mlp_ratio: int, dropout: float, max_distance: int,
               num_speakers: int, window: int = 0,
               position_init: str = "zero", kind: str = "transformer", *,
               rngs, dtype=None):
    if position_init not in POSITION_INITS:
      raise ValueError(f"context_position_init={position_init!r}, not one "
                       f"of {POSITION_INITS}")
    if kind not in CONTEXT_KINDS:
      raise ValueError(f"context_kind={kind!r}, not one of {CONTEXT_KINDS}")
    init = nnx.initializers.normal(0.02)
    self.max_distance = 0 if kind == "gru" else max_distance
    self.window = window
    self.speaker_embedding = nnx.Param(init(rngs.params(),
                                            (num_speakers, dim)))
    self.grus = (nnx.List([BiGRU(dim, dropout, rngs=rngs, dtype=dtype)
                           for _ in range(num_layers)])
                 if kind == "gru" else None)
    if self.max_distance:
      slopes = (2.0 ** (-8.0 * jnp.arange(1, num_heads + 1) / num_heads)
                if position_init == "recency" else jnp.zeros(num_heads))
      steps = jnp.abs(jnp.arange(-max_distance, max_distance + 1))
      self.distance_bias = nnx.Param(-slopes[:, None] * steps[None, :])
    self.blocks = nnx.List([
        attention.Block(dim, num_heads, mlp_ratio, dropout, rngs=rngs,
                        dtype=dtype)
        for _ in range(0 if self.grus is not None else num_layers)])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)

  def __call__(self, u, segment, rank, speaker, rngs):
    """u [B, D] -> h [B, D]; segment, rank, speaker [B] int."""
    table = self.speaker_embedding[...]
    x = u + table[jnp.clip(speaker, 0, table.shape[0] - 1)]
    if self.grus is not None:
      return self.recurrent(x, segment, rank, rngs)
    b, block = len(segment), self.window
    if b > 3 * block > 0:
      pad = -b % block
      x = jnp.pad(x, ((0, pad), (0, 0)))
      segment = jnp.pad(segment, (0, pad), constant_values=groups.PAD)
      rank = jnp.pad(rank, (0, pad))
      # Per block: queries [n, block], keys [n, 3 * block]; a query's own
      # key sits at offset block + its index in the block.
      query = lambda y: y.reshape(-1, block)
      key_segment = attention.neighbours(segment, block, groups.PAD)
      same = ((query(segment)[:, :, None] == key_segment[:, None, :])
              & (key_segment[:, None, :] >= 0))
      mask = same | jnp.eye(block, 3 * block, block, dtype=bool)
      distance = (attention.neighbours(rank, block, 0)[:, None, :]
                  - query(rank)[:, :, None])
    else:
      block = 0
      same = (segment[:, None] == segment[None, :]) & (segment[None, :] >= 0)
      mask = (same | jnp.eye(b, dtype=bool))[None]
      distance = (rank[None, :] - rank[:, None])[None]
    bias = None
    if self.max_distance:
      d = self.max_distance
      distance = jnp.clip(distance, -d, d) + d
      # [n or 1, H, queries, keys]
      bias = jnp.moveaxis(self.distance_bias[...][:, distance], 0, 1)
    x = x[None]
    for layer in self.blocks:
      x = layer(x, mask, rngs, bias, block)
    return self.norm(x[0, :b])

  def recurrent(self, x, segment, rank, rngs):
    """The GRU layers over each window in rank order: the batch is sorted
    by (window, rank), so a window need not be contiguous nor in order,
    and the outputs go back to the batch's order (padding rows form runs
    of their own, read by nobody)."""
    order = jnp.lexsort((rank, segment))
    run = segment[order]
    change = run[1:] != run[:-1]
    start = jnp.concatenate([jnp.ones(1, bool), change])
    end = jnp.concatenate([change, jnp.ones(1, bool)])
    x = x[order]
    for layer in self.grus:
      x = layer(x, start, end, rngs)
    return jnp.zeros_like(x).at[order].set(self.norm(x))
