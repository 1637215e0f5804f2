"""`CrossBatchMemory`: a ring buffer of earlier embeddings used as the loss's reference set
(cross-batch memory, Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020)."""

from __future__ import annotations

import torch
from torch import nn


class CrossBatchMemory(nn.Module):
    """Wraps a loss ``loss(embeddings, labels, ref_embeddings=..., ref_labels=...)`` and feeds it the last
    ``memory_size`` detached embeddings and labels of earlier batches as the reference set.

    Each call computes the loss of the current batch against (batch ∪ memory), then writes the batch into
    the ring buffer. The buffer, its write position and its fill count are registered buffers, so
    ``state_dict()`` carries them and resumed training keeps the memory.
    """

    def __init__(self, loss: nn.Module, embedding_dim: int, memory_size: int = 65536,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if embedding_dim < 1 or memory_size < 1:
            raise ValueError(f"embedding_dim and memory_size must be >= 1, got {embedding_dim}, {memory_size}")
        self.loss = loss
        self.embedding_dim = int(embedding_dim)
        self.memory_size = int(memory_size)
        self.register_buffer("embedding_memory", torch.zeros(memory_size, embedding_dim, dtype=dtype))
        self.register_buffer("label_memory", torch.zeros(memory_size, dtype=torch.int64))
        self.register_buffer("queue_idx", torch.zeros((), dtype=torch.int64))
        self.register_buffer("num_filled", torch.zeros((), dtype=torch.int64))

    def reset(self) -> None:
        self.embedding_memory.zero_()
        self.label_memory.zero_()
        self.queue_idx.zero_()
        self.num_filled.zero_()

    def reference_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(self.num_filled)
        return self.embedding_memory[:n], self.label_memory[:n]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, enqueue: bool = True) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise RuntimeError(f"CrossBatchMemory: embeddings must have shape [B, embedding_dim = {self.embedding_dim}], "
                               f"got {list(embeddings.shape)}")
        ref, ref_labels = self.reference_set()
        if torch.is_grad_enabled() and embeddings.requires_grad:
            # The loss saves its reference set for the backward pass, and enqueue() below overwrites the ring
            # buffer in place: hand the loss a snapshot (O(memory_size * D), like the loss's own buffers).
            ref, ref_labels = ref.clone(), ref_labels.clone()
        if ref.shape[0] == 0:
            loss = self.loss(embeddings, labels)
        else:
            loss = self.loss(embeddings, labels, ref_embeddings=ref.to(embeddings.dtype),
                             ref_labels=ref_labels.to(labels.device))
        if enqueue:
            self.enqueue(embeddings, labels)
        return loss

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        emb = embeddings.detach()[-self.memory_size :]
        lab = labels.detach()[-self.memory_size :]
        n = emb.shape[0]
        start = int(self.queue_idx)
        idx = (torch.arange(n, device=self.embedding_memory.device) + start) % self.memory_size
        self.embedding_memory[idx] = emb.to(self.embedding_memory)
        self.label_memory[idx] = lab.to(self.label_memory)
        self.queue_idx.fill_((start + n) % self.memory_size)
        self.num_filled.fill_(min(self.memory_size, int(self.num_filled) + n))

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, memory_size={self.memory_size}"
