"""``--task translation_fast``: fairseq's translation task with this package's beam search.

Everything is fairseq's ``translation`` task except the generator it builds (for fairseq-generate,
fairseq-interactive, the hub interface and validation BLEU): ``--generator auto`` (the default) searches with
:class:`~collab_fairseq.generation.generator.StaticBeamGenerator` on CUDA and with fairseq's SequenceGenerator on the
CPU; ``static`` uses the former everywhere, ``fairseq`` the latter.
"""

import logging
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import OmegaConf

from collab_fairseq.generation.generator import StaticBeamGenerator

logger = logging.getLogger(__name__)

GENERATORS = ("auto", "static", "fairseq")


@dataclass
class TranslationFastConfig(TranslationConfig):
    generator: ChoiceEnum(GENERATORS) = field(
        default="auto",
        metadata={
            "help": "beam search: auto (this package's fixed-batch search on CUDA, fairseq's elsewhere), static "
            "(this package's everywhere) or fairseq (fairseq's SequenceGenerator)"
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
