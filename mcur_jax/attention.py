"""The pre-LN Transformer block and its masked multi-head self-attention,
shared by the fusion over an utterance's modality tokens (`model.MCUR`) and
the context Transformer over the utterances of windows (`context.Context`).
"""

import jax
import jax.numpy as jnp
from flax import nnx


class SelfAttention(nnx.Module):
  """Multi-head self-attention with a boolean [B, T, T] (query, key) mask.

  The key projection has no bias: it would add the same amount to every
  logit of a query, which softmax ignores, so it would only drift on
  rounding noise.
  """

  def __init__(self, dim: int, num_heads: int, *, rngs, dtype=None):
    if dim % num_heads:
      raise ValueError(f"hidden {dim} is not divisible by {num_heads} heads")
    self.num_heads = num_heads
    self.query = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.key = nnx.Linear(dim, dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.value = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x, mask, bias=None, block=0):
    """x [B, T, D], mask [B, T, T] bool, bias [B or 1, H, T, T] added to the
    logits (None: no bias).

    `block` > 0 (B 1, T a multiple of it): block-local attention, for the
    context Transformer's long rows of windows. The T positions form T /
    block blocks, and the queries of a block see the keys of that block and
    its two neighbours only; mask and bias are then [T / block, block, 3 *
    block] and [T / block, H, block, 3 * block] (`neighbours` lays out
    the keys).
    """
    b, t, d = x.shape
    heads = lambda y: y.reshape(b, t, self.num_heads, -1)
    q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
    if block:
      q = q.reshape(t // block, block, *q.shape[2:])
      k, v = neighbours(k[0], block, 0), neighbours(v[0], block, 0)
    logits = attention_logits(q, k)
    if bias is not None:
      logits = logits + bias
    logits = jnp.where(mask[:, None], logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d))


def attention_logits(q: jax.Array, k: jax.Array) -> jax.Array:
  """Queries [B, T, H, Dh] and keys [B, S, H, Dh] -> the scaled dot products
  [B, H, T, S] in float32 whatever their dtype: bfloat16 products accumulate
  into a float32 result (`preferred_element_type`), as the bias, mask and
  softmax that follow take them, since bfloat16's 8-bit mantissa would
  round the logits coarsely (a logit of 40 to a step of 0.25)."""
  return jnp.einsum("bqhd,bkhd->bhqk", q, k,
                    preferred_element_type=jnp.float32) / jnp.sqrt(q.shape[-1])


def neighbours(y: jax.Array, block: int, fill) -> jax.Array:
  """[T, ...] -> [T / block, 3 * block, ...]: per block of `block` rows, the
  previous block, itself and the next one (`fill` past either end)."""
  y = y.reshape(-1, block, *y.shape[1:])
  edge = jnp.full_like(y[:1], fill)
  return jnp.concatenate([jnp.concatenate([edge, y[:-1]]), y,
                          jnp.concatenate([y[1:], edge])], axis=1)


class Block(nnx.Module):
  """Pre-LN Transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: int,
               dropout: float, *, rngs, dtype=None):
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.attn = SelfAttention(dim, num_heads, rngs=rngs, dtype=dtype)
    self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
    self.fc1 = nnx.Linear(dim, mlp_ratio * dim, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_ratio * dim, dim, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(dropout)

  def __call__(self, x, mask, rngs, bias=None, block=0):
    drop = lambda y: self.drop(y, deterministic=rngs is None, rngs=rngs)
    x = x + drop(self.attn(self.norm1(x), mask, bias, block))
    return x + drop(self.fc2(nnx.gelu(self.fc1(self.norm2(x)))))
