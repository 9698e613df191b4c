from .translation_fast import TranslationFastTask  # noqa: F401  (registers --task translation_fast)
