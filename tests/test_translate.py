"""Translating one's own sentences, as README shows it: raw text in, detokenized text out, through fairseq-interactive
with the sentencepiece flags and through the hub interface, on a tiny model trained on sentencepiece pieces."""

import pytest
import sentencepiece as spm

from tests.helpers import (
    REPO,
    TINY_MODEL,
    TRAIN_FLAGS,
    USER_DIR,
    assert_mostly_copies,
    captured_logs,
    fairseq_interactive,
    fairseq_preprocess,
    fairseq_train,
    write_mapped_copy_task,
)

SENTENCES = ["w1 w22 w3 w17", "w30 w5 w5 w8 w12 w39"]
COPIES = ["W1 W22 W3 W17", "W30 W5 W5 W8 W12 W39"]
# README's flags for its own data layout, checked to be there word for word
INTERACTIVE = (
    "--source-lang en --target-lang de --bpe sentencepiece --sentencepiece-model work/multi30k_en_de/spm/spm.model"
)
HUB = "bpe='sentencepiece', sentencepiece_model='work/multi30k_en_de/spm/spm.model'"


@pytest.fixture(scope="module")
def spm_run(tmp_path_factory):
    """A tiny transformer_collab trained on the mapped-copy task in sentencepiece pieces: (run dir, bin dir, model)."""
    root = tmp_path_factory.mktemp("spm_copy")
    write_mapped_copy_task(root)
    spm.SentencePieceTrainer.train(
        input=f"{root}/train.src,{root}/train.tgt",
        model_prefix=str(root / "spm"),
        vocab_size=48,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    pieces = spm.SentencePieceProcessor(model_file=str(root / "spm.model"))
    for split in ("train", "valid", "test"):
        for lang in ("src", "tgt"):
            lines = (root / f"{split}.{lang}").read_text().splitlines()
            (root / f"{split}.spm.{lang}").write_text(
                "".join(" ".join(pieces.encode(s, out_type=str)) + "\n" for s in lines)
            )
    bin_dir = root / "bin"
    prefixes = [f"--{split}pref" if split != "train" else "--trainpref" for split in ("train", "valid", "test")]
    splits = [x for prefix, split in zip(prefixes, ("train", "valid", "test")) for x in (prefix, root / f"{split}.spm")]
    fairseq_preprocess("--source-lang", "src", "--target-lang", "tgt", *splits, "--destdir", bin_dir,
                       "--joined-dictionary", "--workers", "1")  # fmt: skip
    run = root / "run"
    fairseq_train(bin_dir, "--user-dir", USER_DIR, "--save-dir", run, "--arch", "transformer_collab",
                  "--collab-key-dim", "16", "--share-all-embeddings", *TINY_MODEL, *TRAIN_FLAGS,
                  "--max-update", "300")  # fmt: skip
    return run, bin_dir, root / "spm.model"


def output_texts(interactive_output: str, prefix: str):
    """The text column of fairseq-interactive's lines that start with ``prefix`` (H-: pieces, D-: detokenized)."""
    return [line.split("\t")[2] for line in interactive_output.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def expected(spm_run):
    """What the tiny model translates SENTENCES into when the test does the sentencepiece steps itself: pieces in,
    fairseq-interactive without --bpe, pieces out, decoded. The clients below must give exactly this."""
    run, bin_dir, model = spm_run
    pieces = spm.SentencePieceProcessor(model_file=str(model))
    stdin = "".join(" ".join(pieces.encode(s, out_type=str)) + "\n" for s in SENTENCES)
    out = fairseq_interactive(bin_dir, "--user-dir", USER_DIR, "--path", run / "checkpoint_last.pt", "--beam", "4",
                              "--source-lang", "src", "--target-lang", "tgt", stdin=stdin)  # fmt: skip
    translations = [pieces.decode(text.split()) for text in output_texts(out, "H-")]
    assert_mostly_copies(translations, COPIES)
    return translations


def test_the_readme_shows_the_flags_tested_here():
    readme = " ".join((REPO / "README.md").read_text().split())
    assert INTERACTIVE in readme and HUB in readme


def test_fairseq_interactive_translates_raw_text_with_the_sentencepiece_flags(spm_run, expected):
    run, bin_dir, model = spm_run
    flags = INTERACTIVE.replace("--source-lang en --target-lang de", "--source-lang src --target-lang tgt")
    flags = flags.replace("work/multi30k_en_de/spm/spm.model", str(model))
    out = fairseq_interactive(bin_dir, "--user-dir", USER_DIR, "--path", run / "checkpoint_last.pt", *flags.split(),
                              "--beam", "4", stdin="\n".join(SENTENCES) + "\n")  # fmt: skip
    detokenized = output_texts(out, "D-")
    assert detokenized == expected, out[-2000:]


def test_the_hub_interface_translates_raw_text(spm_run, expected):
    import collab_fairseq  # noqa: F401  (registers the model, as --user-dir does)
    from collab_fairseq.models.transformer_collab import TransformerCollabModel

    run, bin_dir, model = spm_run
    translator = TransformerCollabModel.from_pretrained(
        str(run), checkpoint_file="checkpoint_last.pt", data_name_or_path=str(bin_dir),
        bpe="sentencepiece", sentencepiece_model=str(model),
    )  # fmt: skip
    assert translator.translate(SENTENCES, beam=4) == expected


def test_fairseq_interactive_translates_with_the_package_beam_search(spm_run, expected):
    run, bin_dir, model = spm_run
    flags = ["--source-lang", "src", "--target-lang", "tgt", "--bpe", "sentencepiece", "--sentencepiece-model", model]
    with captured_logs() as log:
        out = fairseq_interactive(bin_dir, "--user-dir", USER_DIR, "--path", run / "checkpoint_last.pt", *flags,
                                  "--beam", "4", "--task", "translation_fast", "--generator", "static",
                                  stdin="\n".join(SENTENCES) + "\n")  # fmt: skip
    detokenized = output_texts(out, "D-")
    assert detokenized == expected, out[-2000:]
    assert "beam search: fixed batch x beam (4)" in log.getvalue() and "decoding: static caches" in log.getvalue()
