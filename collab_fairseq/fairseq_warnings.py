"""The deprecation warnings that fairseq 0.12's own calls into hydra and torch print on every command, silenced.

They name APIs that fairseq calls (hydra's experimental initialize / compose, its old package headers and schema
matching, ``torch.cuda.amp``), which a user of fairseq cannot change. Only these messages are filtered, each from
its start and for its category; every other warning shows as before.
"""

import warnings

FAIRSEQ_DEPRECATIONS = [
    (UserWarning, r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental"),
    (UserWarning, r"\s*The version_base parameter is not specified"),
    (UserWarning, r"In '\w+': Usage of deprecated keyword in package header"),
    (UserWarning, r"\s*'\w+' is validated against ConfigStore schema with the same name"),
    (UserWarning, r"\s*The strict flag in the compose API is deprecated"),
    (FutureWarning, r"`torch\.cuda\.amp\.(autocast|GradScaler)\(args\.\.\.\)` is deprecated"),
]


def silence_fairseq_deprecations() -> None:
    """Add one 'ignore' filter per message of FAIRSEQ_DEPRECATIONS (idempotent: warnings drops duplicates)."""
    for category, message in FAIRSEQ_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category)
