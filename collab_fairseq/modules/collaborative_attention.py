"""Collaborative multi-head attention: heads share one key/query space.

Reference: J.-B. Cordonnier, A. Loukas, M. Jaggi. "Multi-Head Attention:
Collaborate Instead of Concatenate", 2020 (arXiv:2006.16362).

For a query token x and a key token y (both of width D_in), head h scores

    score_h(x, y) = s * (q(x) * m_h) . k(y) + c_h(y),        s = (D_k / H) ** -0.5

with one shared query projection q(x) = x W_Q and one shared key projection
k(y) = y W_K (D_in -> D_k), a mixing matrix M (H x D_k) whose row m_h re-weights
the shared dimensions for head h, and a content bias c(y) = y W_C (D_in -> H).

Why these biases and no others: a key-projection bias adds (q(x) * m_h) . b_K to
every key of one query, a constant the softmax removes. A query bias b_Q adds
(b_Q * m_h) . k(y), which depends on the key only; that is exactly c_h(y), so the
per-head query biases of a trained standard layer become W_C (W_C[:, h] =
s * W_K^h b_Q^h), which re-parametrization needs. With the ``concatenate``
mixing (row h is one on its own block of D_k / H columns) and D_k = H * d_k the
layer is standard multi-head attention exactly.

Values and the output projection stay per head, as in standard attention.

``mode="concatenate"`` is the paper's other baseline: ordinary concatenated
heads with a reduced key dimension, per-head d_k = D_k / H (query and key
projections with biases, no mixing, no content bias).

Shapes: inputs are T x B x C (time first), as in
:class:`fairseq.modules.MultiheadAttention`, whose forward contract this keeps.
The incremental cache holds the shared keys once, with the content bias folded in
(B x S x (D_k + H), [k | c]; B x S x D_k and a B x H x S content-bias entry where it is
not folded: quant-noise layers, concatenated heads have neither bias), the values
(B x H x S x d_v) and the key padding mask (B x S; None for encoder keys once their padding
is folded into c).
"""

import math
from typing import Any, Dict, Optional, Tuple

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules import MultiheadAttention
from fairseq.modules.fairseq_dropout import FairseqDropout
from fairseq.modules.quant_noise import quant_noise
from torch import Tensor, nn

from collab_fairseq.modules.attention_kernels import (
    KERNEL_NAMES,
    attend,
    attention_scores,
    explicit_attention,
    kernel_preferences,
    per_head_queries,
    score_bias,
)
from collab_fairseq.modules.collab_projections import fold_padding, folded_mixing, kept, project, project_folded

MODES = ("collaborative", "concatenate")
MIXING_INITS = ("concatenate", "normal", "xavier")


def check_layer_options(
    key_dim: int, num_heads: int, mode: str, mixing_init: str, mixing_lr_scale: float = 1.0, kernel: str = "auto"
) -> None:
    """Raise ValueError (naming the fix) if this layer cannot be built."""
    if not mixing_lr_scale >= 0.0:  # also rejects NaN
        raise ValueError(
            f"mixing learning-rate scale must be >= 0 (0 freezes the mixing), got {mixing_lr_scale!r} "
            "(e.g. --collab-mixing-lr-scale 0.1)"
        )
    if mode not in MODES:
        raise ValueError(f"unknown collaborative attention mode {mode!r}; choose one of {', '.join(MODES)}")
    if mixing_init not in MIXING_INITS:
        raise ValueError(f"unknown mixing init {mixing_init!r}; choose one of {', '.join(MIXING_INITS)}")
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(KERNEL_NAMES)}")
    if not isinstance(key_dim, int) or key_dim <= 0:
        raise ValueError(f"key dimension D_k must be a positive integer, got {key_dim!r} (e.g. --collab-key-dim 128)")
    needs_split = mode == "concatenate" or mixing_init == "concatenate"
    if needs_split and key_dim % num_heads != 0:
        what = "concatenated heads" if mode == "concatenate" else "the 'concatenate' mixing init"
        raise ValueError(
            f"D_k={key_dim} cannot be split into {num_heads} heads for {what}: use a multiple of {num_heads}"
            + ("" if mode == "concatenate" else ", or --collab-mixing-init normal/xavier")
        )


def init_mixing_(mixing: Tensor, how: str) -> Tensor:
    """Fill the H x D_k mixing matrix in place.

    concatenate: head h gets ones on columns [h * D_k/H, (h+1) * D_k/H).
    normal: N(0, 1/H), which gives the scores the same expected variance as
        ``concatenate`` (D_k/H ones per row); the authors' HF code uses a normal init.
    xavier: xavier_uniform, as in the authors' fairseq code.
    """
    num_heads, key_dim = mixing.shape
    with torch.no_grad():
        if how == "concatenate":
            mixing.zero_()
            block = key_dim // num_heads
            for h in range(num_heads):
                mixing[h, h * block : (h + 1) * block] = 1.0
        elif how == "normal":
            mixing.normal_(0.0, num_heads**-0.5)
        elif how == "xavier":
            nn.init.xavier_uniform_(mixing)
        else:
            raise ValueError(f"unknown mixing init {how!r}; choose one of {', '.join(MIXING_INITS)}")
    return mixing


@with_incremental_state
class CollaborativeMultiheadAttention(nn.Module):
    """Drop-in for :class:`fairseq.modules.MultiheadAttention` with shared key/query projections.

    Positional arguments are fairseq's; the new ones are keyword-only:
        key_dim: D_k, width of the shared key/query space (all heads together).
        mode: "collaborative" (shared projections + mixing) or "concatenate"
            (standard heads with per-head d_k = D_k / H).
        mixing_init: "concatenate" | "normal" | "xavier" (collaborative mode only).
        mixing_lr_scale: the mixing matrix learns this many times slower than the other weights under
            Adam-like optimizers (parametrised as M = scale * P, P the stored parameter); 0 freezes it.
            The state dict stores the scale next to P, so a state loaded into a layer of another scale
            keeps its M.
        content_bias: keep the per-head key-dependent bias c(y) = y W_C (collaborative mode only).
        kernel: how attention is computed when no weights are returned, a name of
            :data:`collab_fairseq.modules.attention_kernels.KERNEL_NAMES` (the same function either way).

    The forward is a pipeline: project (collab_projections.py) -> cache -> kernel (attention_kernels.py, tried in the
    order of ``kernel_preferences``) -> output projection. The module holds the parameters (M = scale * P), the
    cache and the choice of kernel.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        self_attention: bool = False,
        encoder_decoder_attention: bool = False,
        q_noise: float = 0.0,
        qn_block_size: int = 8,
        *,
        key_dim: int,
        mode: str = "collaborative",
        mixing_init: str = "concatenate",
        mixing_lr_scale: float = 1.0,
        content_bias: bool = True,
        kernel: str = "auto",
    ):
        super().__init__()
        if add_bias_kv or add_zero_attn:
            raise ValueError("CollaborativeMultiheadAttention does not support add_bias_kv / add_zero_attn")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        check_layer_options(key_dim, num_heads, mode, mixing_init, mixing_lr_scale, kernel)
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.head_dim = embed_dim // num_heads  # per-head value width d_v
        self.mode = mode
        self.collaborative = mode == "collaborative"
        self.scaling = (key_dim / num_heads) ** -0.5
        self.self_attention = self_attention
        self.encoder_decoder_attention = encoder_decoder_attention
        self.dropout_module = FairseqDropout(dropout, module_name=self.__class__.__name__)
        self.onnx_trace = False
        self.kernel = kernel

        qk_bias = bias and not self.collaborative
        self.q_proj = quant_noise(nn.Linear(embed_dim, key_dim, bias=qk_bias), q_noise, qn_block_size)
        self.k_proj = quant_noise(nn.Linear(self.kdim, key_dim, bias=qk_bias), q_noise, qn_block_size)
        self.v_proj = quant_noise(nn.Linear(self.vdim, embed_dim, bias=bias), q_noise, qn_block_size)
        self.out_proj = quant_noise(nn.Linear(embed_dim, embed_dim, bias=bias), q_noise, qn_block_size)
        self.mixing_lr_scale = float(mixing_lr_scale)
        if self.collaborative:
            # Stored as P with M = mixing_lr_scale * P: Adam steps P by ~lr, so M moves scale * lr per step.
            self.mixing = nn.Parameter(torch.empty(num_heads, key_dim), requires_grad=self.mixing_lr_scale > 0)
            self.content_bias = nn.Linear(self.kdim, num_heads, bias=False) if content_bias else None
        else:
            self.register_parameter("mixing", None)
            self.content_bias = None
        self.mixing_init = mixing_init
        # one GEMM for all input projections of the same input (quant-noise hooks need the separate ones)
        self.stack_projections = q_noise == 0
        self.reset_parameters()

    def reset_parameters(self):
        # Same scheme as fairseq's MultiheadAttention (scaled xavier for the input projections).
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.constant_(proj.bias, 0.0)
        if self.collaborative:
            self.set_mixing_(init_mixing_(torch.empty_like(self.mixing), self.mixing_init))
            if self.content_bias is not None:
                nn.init.zeros_(self.content_bias.weight)

    # ------------------------------------------------------------------ the mixing matrix and its scale
    def _storage_scale(self) -> float:
        """P = M / this (a frozen mixing, scale 0, is stored as M itself)."""
        return self.mixing_lr_scale if self.mixing_lr_scale > 0 else 1.0

    def mixing_matrix(self) -> Tensor:
        """The mixing matrix M (H x D_k) the scores use."""
        if self.mixing_lr_scale in (0.0, 1.0):
            return self.mixing
        return self.mixing * self.mixing_lr_scale

    @torch.no_grad()
    def set_mixing_(self, mixing: Tensor) -> None:
        """Make :meth:`mixing_matrix` equal ``mixing`` (H x D_k), whatever the learning-rate scale."""
        self.mixing.copy_(mixing / self._storage_scale())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.collaborative:
            # float64 and made here, not a buffer: fp16 training would round a buffer, and fairseq leaves float64 be
            destination[prefix + "mixing_storage_scale"] = torch.tensor(self._storage_scale(), dtype=torch.float64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        stored_scale = state_dict.pop(prefix + "mixing_storage_scale", None)  # absent: stored with this layer's scale
        if self.collaborative and stored_scale is not None and prefix + "mixing" in state_dict:
            ratio = float(stored_scale) / self._storage_scale()
            if ratio != 1.0:
                stored = state_dict[prefix + "mixing"]
                state_dict[prefix + "mixing"] = (stored.double() * ratio).to(stored.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    def prepare_for_onnx_export_(self):
        self.onnx_trace = True

    # ------------------------------------------------------------------ the kernels' inputs
    def _decoding_constants(self, incremental_state) -> Optional[Dict[str, Any]]:
        """What every step of one incremental decoding run recomputes from the weights alone (the stacked projection
        weights, the scaled mixing), kept in the run's ``incremental_state`` beside the cache, so that a step does not
        dispatch those operators again; the weights cannot change within a run. None (compute them) outside
        incremental decoding and with gradients on."""
        if incremental_state is None or torch.is_grad_enabled():
            return None
        constants = self.get_incremental_state(incremental_state, "constants")
        if constants is None:
            constants = {}
            self.set_incremental_state(incremental_state, "constants", constants)
        return constants

    def _folds_content_bias(self, incremental_state, key, value, static_kv: bool) -> bool:
        """Whether this call decodes with the content bias folded into the keys (collab_projections.project_folded):
        collaborative heads with a content bias and stacked projections, in fairseq's two incremental cases
        (self-attention; encoder-decoder attention over static keys that are also the values)."""
        return (
            incremental_state is not None
            and self.collaborative
            and self.content_bias is not None
            and self.stack_projections
            and (self.self_attention or (static_kv and key is value))
        )

    def _kernel_inputs(self, query, key, value, key_padding_mask, incremental_state, static_kv):
        """Project (or read from the cache) what the kernels take, in attention_kernels' contract: (queries
        B x Hq x T x d, mixing H x d or None, keys B x Hk x S x d, values B x H x S x d_v, content bias B x H x S or
        None, key padding mask B x S or None), and the mixing's scale."""
        saved_state = None
        if incremental_state is not None:
            saved_state = self._get_input_buffer(incremental_state)
            if "prev_key" in saved_state and static_kv:  # encoder keys/values were cached at the first step
                assert self.encoder_decoder_attention and not self.self_attention
                key = value = None
        if self.self_attention:
            key = value = query
        constants = self._decoding_constants(incremental_state)
        weights = (self.q_proj, self.k_proj, self.v_proj, self.content_bias, self.num_heads)
        if self._folds_content_bias(incremental_state, key, value, static_kv):
            q, k, v = project_folded(query, key, *weights, constants)
            content_bias, mixing, scale = None, folded_mixing(self._scaled_mixing(q.dtype, constants), constants), 1.0
            if static_kv:  # encoder keys: their padding goes into the cached keys once; no mask after that
                if k is not None and key_padding_mask is not None:
                    k = fold_padding(k, key_padding_mask, self.key_dim)
                key_padding_mask = None
        else:
            q, k, content_bias, v = project(query, key, value, *weights, self.stack_projections, constants)
            mixing, scale = self._kernel_mixing(q.dtype, constants)
        if saved_state is not None:
            k, content_bias, v, key_padding_mask = self._update_cache(
                incremental_state, saved_state, k, content_bias, v, key_padding_mask, query.size(1), static_kv
            )
        if key_padding_mask is not None and key_padding_mask.dim() == 0:
            key_padding_mask = None
        return (self._head_queries(q), mixing, self._head_keys(k), v, content_bias, key_padding_mask), scale

    def _head_queries(self, q: Tensor) -> Tensor:
        """T x B x D_k -> B x 1 x T x D_k, the shared queries (collaborative; a view), or B x H x T x D_k/H, each head's
        queries times the scaling (concatenated heads)."""
        if self.collaborative:
            return q.transpose(0, 1).unsqueeze(1)
        tgt_len, bsz, _ = q.shape
        return (q * self.scaling).view(tgt_len, bsz, self.num_heads, -1).permute(1, 2, 0, 3)

    def _head_keys(self, k: Tensor) -> Tensor:
        """Shared keys B x S x D_k -> B x H' x S x d (H' = 1, a view, when collaborative)."""
        if self.collaborative:
            return k.unsqueeze(1)
        bsz, src_len, _ = k.shape
        return k.view(bsz, src_len, self.num_heads, -1).transpose(1, 2)

    def _scaled_mixing(self, dtype, constants: Optional[Dict[str, Any]] = None) -> Tensor:
        """M times the attention scaling (H x D_k), kept in a decoding run's ``constants``."""
        return kept(constants, f"scaled_mixing_{dtype}", lambda: (self.mixing_matrix() * self.scaling).to(dtype))

    def _kernel_mixing(self, dtype, constants) -> Tuple[Optional[Tensor], float]:
        """(mixing, scale) with mixing * scale = M times the attention scaling (None for concatenated heads): in a
        decoding run the kept product and 1, else the stored parameter and the factor, which a kernel folds into a
        product it makes anyway (one operator less forward and backward per layer while training)."""
        if not self.collaborative:
            return None, 1.0
        if constants is not None:
            return self._scaled_mixing(dtype, constants), 1.0
        return self.mixing.to(dtype), self.scaling * self._storage_scale()

    def _dropout_p(self) -> float:
        apply = self.training or self.dropout_module.apply_during_inference
        return self.dropout_module.p if apply else 0.0

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            query: T x B x C; key, value: S x B x C (ignored for self-attention).
            key_padding_mask: B x S, True (or 1) at padding.
            attn_mask: T x S additive float mask (e.g. -inf above the diagonal), or bool (True = masked).
            incremental_state: fairseq's decoding cache; static_kv: keys are the encoder's (computed once).
        Returns:
            attn: T x B x C; weights: B x T x S averaged over heads, H x B x T x S with
            need_head_weights, or None. With before_softmax: (scores (B*H) x T x S, values (B*H) x S x d_v).
        """
        tgt_len, bsz, embed_dim = query.size()
        assert embed_dim == self.embed_dim, f"query dim {embed_dim} != {self.embed_dim}"
        inputs, scale = self._kernel_inputs(query, key, value, key_padding_mask, incremental_state, static_kv)
        q, mixing, k, v, content_bias, key_padding_mask = inputs
        if before_softmax:
            bias = score_bias(content_bias, key_padding_mask, attn_mask, q.dtype)
            scores = attention_scores(per_head_queries(q, mixing, scale), k, bias)
            return scores.reshape(bsz * self.num_heads, tgt_len, -1), v.reshape(bsz * self.num_heads, k.size(2), -1)
        inputs = (*inputs, attn_mask, self._dropout_p())
        if not (need_weights or need_head_weights):
            kernels = kernel_preferences(self.kernel, q.is_cuda, tgt_len, k.size(2))
            return self._output(attend(kernels, *inputs, mixing_scale=scale), tgt_len, bsz), None
        attn, probs = explicit_attention(*inputs, mixing_scale=scale, onnx_trace=self.onnx_trace)
        weights = probs.type_as(attn).transpose(0, 1)  # H x B x T x S
        return self._output(attn, tgt_len, bsz), weights if need_head_weights else weights.mean(dim=0)

    def _output(self, attn: Tensor, tgt_len: int, bsz: int) -> Tensor:
        """B x H x T x d_v -> T x B x C through the output projection."""
        attn = attn.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)
        return self.out_proj(attn)

    # ------------------------------------------------------------------ incremental decoding
    def _update_cache(self, incremental_state, saved_state, k, content_bias, v, key_padding_mask, bsz, static_kv):
        """Append this step's keys/values to the cache (or reuse static encoder ones) and store it back."""
        if "prev_key" in saved_state:
            prev_k, prev_v = saved_state["prev_key"], saved_state["prev_value"]
            prev_content_bias = saved_state.get("prev_content_bias")
            if static_kv or k is None:
                k, v, content_bias = prev_k, prev_v, prev_content_bias
            else:
                # the step's pieces are strided views of one projection; made dense first (one token each), because
                # torch's vectorized concatenation on CUDA takes only dense inputs, and the fallback kernel over the
                # whole cache cost 2.8 ms per step against the transformer's 1.1 at 200 tokens (H100, 90e9683)
                k = torch.cat([prev_k, k.contiguous()], dim=1)
                v = torch.cat([prev_v, v.contiguous()], dim=2)
                if content_bias is not None:
                    content_bias = torch.cat([prev_content_bias, content_bias.contiguous()], dim=2)
        key_padding_mask = MultiheadAttention._append_prev_key_padding_mask(
            key_padding_mask=key_padding_mask,
            prev_key_padding_mask=saved_state.get("prev_key_padding_mask"),
            batch_size=bsz,
            src_len=k.size(1),
            static_kv=static_kv,
        )
        saved_state["prev_key"] = k
        # dense once here (a first step's values are a strided view of the projection), or the values' GEMM would
        # copy them at every step: the encoder-side cache is not reordered into a new tensor while the batch keeps
        # its size
        saved_state["prev_value"] = v = v.contiguous()
        if content_bias is not None:
            saved_state["prev_content_bias"] = content_bias
        saved_state["prev_key_padding_mask"] = key_padding_mask
        self._set_input_buffer(incremental_state, saved_state)
        return k, content_bias, v, key_padding_mask

    @torch.jit.export
    def reorder_incremental_state(
        self, incremental_state: Dict[str, Dict[str, Optional[Tensor]]], new_order: Tensor
    ) -> Dict[str, Dict[str, Optional[Tensor]]]:
        """Beam search: select the cache rows (batch dim 0 of every entry) of the surviving hypotheses.

        The encoder-side cache of cross-attention is left as it is while the batch keeps its size, as fairseq's
        MultiheadAttention leaves it: fairseq's search then only permutes the hypotheses of each sentence, whose
        rows of that cache are equal (the encoder output repeated per hypothesis), so selecting them would copy
        the whole cache at every step for nothing. It is reordered when finished sentences leave the batch."""
        input_buffer = self._get_input_buffer(incremental_state)
        if self.encoder_decoder_attention:
            for cached in input_buffer.values():
                if cached is not None:
                    if cached.size(0) == new_order.size(0):
                        return incremental_state
                    break
        for name, cached in input_buffer.items():
            if cached is not None:
                input_buffer[name] = cached.index_select(0, new_order)
        self._set_input_buffer(incremental_state, input_buffer)
        return incremental_state

    def _get_input_buffer(
        self, incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]]
    ) -> Dict[str, Optional[Tensor]]:
        result = self.get_incremental_state(incremental_state, "attn_state")
        if result is not None:
            return result
        empty: Dict[str, Optional[Tensor]] = {}
        return empty

    def _set_input_buffer(
        self, incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]], buffer: Dict[str, Optional[Tensor]]
    ):
        return self.set_incremental_state(incremental_state, "attn_state", buffer)

    def extra_repr(self) -> str:
        extra = (
            ""
            if not self.collaborative
            else (
                f", mixing_init={self.mixing_init}, mixing_lr_scale={self.mixing_lr_scale}, "
                f"content_bias={self.content_bias is not None}"
            )
        )
        return f"mode={self.mode}, key_dim={self.key_dim}, heads={self.num_heads}, kernel={self.kernel}{extra}"


def attention_parameter_count(
    embed_dim: int,
    num_heads: int,
    key_dim: int,
    mode: str = "collaborative",
    kdim: Optional[int] = None,
    content_bias: bool = True,
) -> int:
    """Closed-form parameter count of one CollaborativeMultiheadAttention (biases included, vdim = kdim).

    collaborative: W_Q (C x D_k) + W_K (C_k x D_k) + W_C (C_k x H) + M (H x D_k) + values + output
    concatenate:   W_Q, b_Q, W_K, b_K (D_k each)                              + values + output
    """
    kdim = embed_dim if kdim is None else kdim
    values_and_output = (kdim * embed_dim + embed_dim) + (embed_dim * embed_dim + embed_dim)
    if mode == "collaborative":
        bias = kdim * num_heads if content_bias else 0
        return embed_dim * key_dim + kdim * key_dim + bias + num_heads * key_dim + values_and_output
    return embed_dim * key_dim + key_dim + kdim * key_dim + key_dim + values_and_output
