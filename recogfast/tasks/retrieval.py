"""Retrieval (``recogfast train retrieval``): an L2-normalised embedding head trained with the
Multi-Similarity loss and hard-pair mining (recogfast.losses; a cross-batch memory with ``--xbm-size``,
all ranks' embeddings under DDP) on M-per-class batches, on the disjoint-class split (Cars196 / Shapes196:
train on the first half of the classes, retrieve among the second). Recall@K and MAP@R on val (whole
training classes held out) and test; the best epoch is chosen on val MAP@R, which scores every relevant
image of every query, where Recall@1 on val's few classes moves by a query or two (docs/SPEC.md).
"""

from __future__ import annotations

from torch import nn

from recogfast.metrics import retrieval_metrics
from recogfast.tasks.base import Task, _held_text


def retrieval_eval(loader, ks=(1, 2, 4, 8), features: bool = False):
    """``model -> {recall@k..., map@r}`` of the embeddings (or pooled features) of `loader`'s images."""
    from recogfast.engine.embed import embed

    def run(model: nn.Module) -> dict[str, float]:
        e, y = embed(model, loader, features=features)
        m = retrieval_metrics(e, y, ks)
        m.pop("num_queries", None)
        return m

    return run


class Retrieval(Task):
    name = "retrieval"
    output = "embedding"
    monitor = ("map@r", "max")
    default_val_fraction = 0.15
    default_protocol = "retrieval"
    loss_ops = ("ms_loss",)
    val_holds_out_classes = True

    def check(self, cfg) -> None:
        if cfg.dataset not in self.datasets:
            raise ValueError(f"{cfg.dataset} is multi-label: use `train multilabel`")
        if cfg.protocol != "retrieval":
            raise ValueError("retrieval trains on the disjoint-class split: --protocol classification is for classify")
        super().check(cfg)

    def train_sampler(self, cfg, train_ds, rank: int, world: int):
        from recogfast.data import MPerClassSampler

        return MPerClassSampler(train_ds.labels, cfg.m_per_class, cfg.batch_size, seed=cfg.seed, shard_id=rank,
                                num_shards=world)

    def check_train_split(self, cfg, train_ds, val_ds, world: int = 1) -> None:
        from recogfast.data import MPerClassSampler

        held, lower = _held_text(cfg, val_ds, True)
        ranks = f" over {world} ranks" if world > 1 else ""
        if cfg.batch_size % cfg.m_per_class:
            raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of --m-per-class {cfg.m_per_class}")
        need = cfg.batch_size // cfg.m_per_class
        if train_ds.num_classes < need:
            raise ValueError(
                f"the training split has {train_ds.num_classes} classes{held}, fewer than the {need} distinct classes "
                f"one batch needs (--batch-size {cfg.batch_size} / --m-per-class {cfg.m_per_class}): lower --batch-size "
                f"to {train_ds.num_classes * cfg.m_per_class} or less{lower}")
        batches = len(MPerClassSampler(train_ds.labels, cfg.m_per_class, cfg.batch_size, seed=cfg.seed))
        if batches // world == 0:
            raise ValueError(
                f"the training split gives {batches} batch(es) of --batch-size {cfg.batch_size} per epoch{held}, fewer "
                f"than one per rank{ranks}: lower --batch-size{lower}")

    def train_notes(self, cfg, train_ds) -> list[str]:
        from recogfast.engine.inputs import small_classes_note

        note = small_classes_note(train_ds.labels, cfg.m_per_class)
        return [note] if note else []

    def build_model(self, cfg, num_classes: int | None) -> nn.Module:
        from recogfast.models import create_model

        return create_model(cfg.model, embedding_dim=cfg.embedding_dim, stem=cfg.stem, attn_impl=cfg.attn_impl,
                            weights=cfg.weights)

    def build_loss(self, cfg, train_ds) -> nn.Module:
        from recogfast.distributed import rank_and_world
        from recogfast.losses import CrossBatchMemory, MultiSimilarityLoss

        loss = MultiSimilarityLoss(alpha=cfg.ms_alpha, beta=cfg.ms_beta, base=cfg.ms_base, epsilon=cfg.ms_epsilon,
                                   mining=cfg.mining, gather_across_ranks=cfg.gather_across_ranks and rank_and_world()[1] > 1)
        if cfg.xbm_size > 0:
            loss = CrossBatchMemory(loss, cfg.embedding_dim, memory_size=cfg.xbm_size)
        return loss

    def config_extras(self, train_ds) -> dict:
        return {}  # an embedding has no classes

    def evaluator(self, cfg, loader, ds, features: bool = False):
        return retrieval_eval(loader, features=features)

    def describe_output(self) -> dict:
        return {"output": "embedding", "l2_normalised": True}

    def probabilities(self, logits):
        raise ValueError("a retrieval model returns embeddings, not class probabilities")
