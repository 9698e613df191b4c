"""``--task translation_fast``: fairseq's translation task with this package's training step and beam search.

Everything is fairseq's ``translation`` task except:

- the training step (``--train-step``): ``fairseq`` (the default) is fairseq's batches and step. ``auto`` cuts the
  training subset into batches of fixed shapes (``--bucket-width``, :mod:`collab_fairseq.training.buckets`) and on
  CUDA replays each shape's micro-batch as a CUDA graph (:mod:`collab_fairseq.training.train_step`); ``graphs`` asks
  for that everywhere (on the CPU: padded eager micro-batches), ``bucketed`` for the fixed shapes with eager
  micro-batches. With those three the model's encoder and decoder (fairseq's transformer or transformer_collab) run
  without host syncs (:mod:`collab_fairseq.models.sync_free`), and with ``--fp16`` fairseq's optimizer copies
  between the fp16 model and its fp32 weights in one launch each way (:mod:`collab_fairseq.training.fp16_copies`;
  ``--fairseq-fp16-copies`` keeps fairseq's).
  They are not the default because on a GPU they trained worse models than fairseq's step
  (``results/fast_train_quality``: Multi30k 19 BLEU against 37.7; the likely cause, small left-over batches, is
  fixed but not yet measured again on a GPU); on a GPU the log says so.
- the generator it builds (for fairseq-generate, fairseq-interactive, the hub interface and validation BLEU):
  ``--generator auto`` (the default) searches with :class:`~collab_fairseq.generation.generator.StaticBeamGenerator`
  on CUDA and with fairseq's SequenceGenerator on the CPU; ``static`` uses the former everywhere, ``fairseq`` the
  latter.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import OmegaConf

from collab_fairseq.generation.generator import StaticBeamGenerator
from collab_fairseq.models.sync_free import make_sync_free
from collab_fairseq.training.buckets import Buckets
from collab_fairseq.training.fp16_copies import speed_up_fp16_optimizer
from collab_fairseq.training.train_step import BucketedTrainStep

logger = logging.getLogger(__name__)

GENERATORS = ("auto", "static", "fairseq")
TRAIN_STEPS = ("auto", "graphs", "bucketed", "fairseq")


@dataclass
class TranslationFastConfig(TranslationConfig):
    generator: ChoiceEnum(GENERATORS) = field(
        default="auto",
        metadata={
            "help": "beam search: auto (this package's fixed-batch search on CUDA, fairseq's elsewhere), static "
            "(this package's everywhere) or fairseq (fairseq's SequenceGenerator)"
        },
    )
    train_step: ChoiceEnum(TRAIN_STEPS) = field(
        default="fairseq",
        metadata={
            "help": "training step: fairseq (fairseq's batches and step), auto (fixed batch shapes and a CUDA graph "
            "per shape on CUDA, fairseq's step elsewhere), graphs (the same, padded eager steps on the CPU) or "
            "bucketed (fixed shapes, eager steps). The last three trained worse models than fairseq's step on a GPU "
            "(results/fast_train_quality): for measuring speed until that is fixed"
        },
    )
    bucket_width: int = field(
        default=4,
        metadata={"help": "training batches: source and target lengths rounded up to a multiple of this"},
    )
    fairseq_fp16_copies: bool = field(
        default=False,
        metadata={
            "help": "with --fp16 and a bucketed or graphed step: keep fairseq's per-parameter copies between "
            "the fp16 model and its fp32 weights (else one launch each way)"
        },
    )


@register_task("translation_fast", dataclass=TranslationFastConfig)
class TranslationFastTask(TranslationTask):
    cfg: TranslationFastConfig

    @classmethod
    def from_task(cls, task: TranslationTask, generator: str = "auto") -> "TranslationFastTask":
        """This task with ``task``'s settings and dictionaries, e.g. for a hub interface loaded from a checkpoint
        trained with ``--task translation``: ``hub.task = TranslationFastTask.from_task(hub.task)``."""
        settings = OmegaConf.to_container(OmegaConf.create(task.cfg), resolve=False) if task.cfg is not None else {}
        known = TranslationFastConfig.__dataclass_fields__
        cfg = TranslationFastConfig(**{k: v for k, v in settings.items() if k in known and k != "_name"})
        cfg.generator = generator
        return cls(cfg, task.src_dict, task.tgt_dict)

    def train_step_mode(self) -> str:
        """fairseq, bucketed or graphs: what --train-step asks for on this machine."""
        choice = str(self.cfg.train_step)
        if choice not in TRAIN_STEPS:
            raise ValueError(f"unknown --train-step {choice!r}; choose one of {', '.join(TRAIN_STEPS)}")
        if choice == "auto":
            return "graphs" if torch.cuda.is_available() else "fairseq"
        return choice

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.train_step_mode() != "fairseq" and make_sync_free(model):
            logger.info("encoder and decoder: forward without host syncs (collab_fairseq.models.sync_free)")
        return model

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if split != self.cfg.train_subset or self.train_step_mode() == "fairseq":
            return
        width, multiple = int(self.cfg.bucket_width), int(self.cfg.required_seq_len_multiple or 1)
        if width % multiple:
            raise ValueError(f"--bucket-width {width} must be a multiple of --required-seq-len-multiple {multiple}")
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            logger.info("training batches: fairseq's (several GPUs: the training step falls back to fairseq's)")
            return
        dataset = self.datasets[split]
        if getattr(dataset, "tgt_sizes", None) is None or getattr(dataset, "src_sizes", None) is None:
            logger.info("training batches: fairseq's (%s has no target sizes to bucket)", type(dataset).__name__)
            return
        task = self

        def batch_by_size(indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
            task.buckets = Buckets(width, max_tokens, max_sentences, required_batch_size_multiple)
            batches = task.buckets.batches(indices, dataset.src_sizes, dataset.tgt_sizes)
            shapes = [
                task.buckets.shape(len(b), dataset.src_sizes[b].max(), dataset.tgt_sizes[b].max()) for b in batches
            ]
            real = int(dataset.src_sizes[indices].sum() + dataset.tgt_sizes[indices].sum())
            padded = sum(rows * (s + t) for rows, s, t in shapes)
            logger.info("training batches: %d in %d shapes (lengths rounded up to %d), %.1f%% of positions padding",
                        len(batches), len(set(shapes)), width, 100 * (1 - real / max(padded, 1)))  # fmt: skip
            return batches

        dataset.batch_by_size = batch_by_size

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        step = self._bucketed_step(model)
        if step is not None:
            self._bind_fp16_copies(optimizer)
            model.train()
            model.set_num_updates(update_num)
            with torch.autograd.profiler.record_function("bucketed micro-batch"):
                result = step(sample, model, criterion, optimizer, ignore_grad)
            if result is not None:
                return result
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def _bind_fp16_copies(self, optimizer) -> bool:
        """Give fairseq's FP16Optimizer the one-launch copies unless --fairseq-fp16-copies; once per optimizer (the
        trainer may build a new one). Returns whether it has them."""
        if getattr(self, "_copies_checked_for", None) is not optimizer:
            self._copies_checked_for = optimizer
            if not self.cfg.fairseq_fp16_copies and speed_up_fp16_optimizer(optimizer):
                logger.info("fp16 optimizer: one launch each way between the fp16 model and the fp32 weights "
                            "(collab_fairseq.training.fp16_copies)")  # fmt: skip
        return bool(getattr(optimizer, "_one_launch_copies", False))

    def _bucketed_step(self, model) -> Optional[BucketedTrainStep]:
        if getattr(self, "bucketed_step", False) is not False:
            return self.bucketed_step
        mode, cuda = self.train_step_mode(), next(model.parameters()).is_cuda
        buckets = getattr(self, "buckets", None)
        self.bucketed_step = None
        if mode == "fairseq" or buckets is None or self.cfg.left_pad_target:
            why = ("--train-step fairseq" if mode == "fairseq" else "--left-pad-target" if self.cfg.left_pad_target
                   else "the training batches are fairseq's")  # fmt: skip
            logger.info("training step: fairseq's (%s)", why)
            return None
        if mode == "graphs" and not cuda:
            logger.info("training step: padded eager micro-batches (CUDA graphs need a GPU)")
        else:
            logger.info("training step: %s", "a CUDA graph per batch shape" if mode == "graphs" else
                        "padded eager micro-batches (--train-step bucketed)")  # fmt: skip
        if cuda:
            logger.warning("training step: on a GPU this step trained worse models than fairseq's (Multi30k: 19 BLEU "
                           "against 37.7, results/fast_train_quality; the likely cause fixed, not yet measured again "
                           "on a GPU): use it to measure speed, "
                           "and --train-step fairseq (the default) to train models")  # fmt: skip
        src, tgt = self.source_dictionary, self.target_dictionary
        assert src.pad() == tgt.pad() and src.eos() == tgt.eos(), "source and target dictionaries disagree on pad/eos"
        self.bucketed_step = BucketedTrainStep(
            buckets, src.pad(), src.eos(), bool(self.cfg.left_pad_source), graphs=mode == "graphs" and cuda
        )
        return self.bucketed_step

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None):
        choice = str(self.cfg.generator)
        if choice not in GENERATORS:
            raise ValueError(f"unknown --generator {choice!r}; choose one of {', '.join(GENERATORS)}")
        special = getattr(args, "score_reference", False) or getattr(args, "print_alignment", False)
        if seq_gen_cls is None and choice != "fairseq" and not special:
            seq_gen_cls = StaticBeamGenerator
            extra_gen_cls_kwargs = {**(extra_gen_cls_kwargs or {}), "use": "always" if choice == "static" else "auto"}
        elif choice != "fairseq":
            logger.info("beam search: fairseq's (--score-reference / --print-alignment / a caller's generator class)")
        return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)
