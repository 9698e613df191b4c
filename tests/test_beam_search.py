"""The fixed-batch beam search (collab_fairseq/generation) finds what fairseq's SequenceGenerator finds: the same
hypotheses, in the same order, with the same scores, for both kinds of model and fairseq's search options."""

import copy

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from host_reads import HostReads

from collab_fairseq.generation.generator import StaticBeamGenerator
from collab_fairseq.generation.incremental import IncrementalDecoding
from collab_fairseq.generation.static_cache import StaticCacheDecoding
from tests.helpers import USER_DIR, captured_logs, fairseq_generate, load_model

OPTIONS = {
    "defaults": {},
    "lenpen": {"len_penalty": 0.6},
    "short max-len-a/b": {"max_len_a": 0.5, "max_len_b": 2},
    "min-len": {"min_len": 9},
    "unnormalized, unk penalty": {"normalize_scores": False, "unk_penalty": 1.5},
    "temperature": {"temperature": 1.7},
}


@pytest.fixture(scope="module")
def task_and_models(copy_data, collab_run, transformer_checkpoint):
    _, bin_dir = copy_data
    task = TranslationTask.setup_task(
        TranslationConfig(data=str(bin_dir), source_lang="src", target_lang="tgt", required_seq_len_multiple=1,
                          dataset_impl=None, train_subset="train")
    )  # fmt: skip
    task.load_dataset("test")
    models = {
        "collab": load_model(collab_run / "checkpoint_last.pt", bin_dir),
        "transformer": load_model(transformer_checkpoint, bin_dir),
    }
    return task, models


def batches(task, max_sentences=24):
    dataset = task.dataset("test")
    itr = task.get_batch_iterator(dataset, max_sentences=max_sentences, required_batch_size_multiple=1, seed=1)
    return list(itr.next_epoch_itr(shuffle=False))


def assert_same_hypotheses(ours, theirs):
    """The same hypotheses in the same order with the same scores (to 1e-5), except where two candidates tie: which of
    them a beam keeps then depends on float rounding (the machine's thread count), so a different hypothesis of the
    same score is accepted, for at most one hypothesis in 50 of a batch."""
    assert len(ours) == len(theirs)
    ties, hypotheses = 0, 0
    for sentence_ours, sentence_theirs in zip(ours, theirs):
        assert len(sentence_ours) == len(sentence_theirs)
        for a, b in zip(sentence_ours, sentence_theirs):
            hypotheses += 1
            torch.testing.assert_close(a["score"], b["score"], rtol=0, atol=1e-5)
            if a["tokens"].tolist() != b["tokens"].tolist():
                ties += 1
                continue
            torch.testing.assert_close(a["positional_scores"], b["positional_scores"], rtol=0, atol=1e-5)
    assert ties <= hypotheses // 50, f"{ties} of {hypotheses} hypotheses differ (in tied scores)"


def translate_both(task, model, beam, options, prefix_size=0, max_sentences=24):
    fairseq = SequenceGenerator([model], task.target_dictionary, beam_size=beam, **options)
    ours = StaticBeamGenerator([model], task.target_dictionary, use="always", beam_size=beam, **options)
    for sample in batches(task, max_sentences):
        prefix = sample["target"][:, :prefix_size] if prefix_size else None
        yield ours.generate([model], sample, prefix_tokens=prefix), fairseq.generate(
            [model], sample, prefix_tokens=prefix
        )


@pytest.mark.parametrize("kind", ["collab", "transformer"])
@pytest.mark.parametrize("beam", [1, 4, 5])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_same_hypotheses_and_scores_as_fairseq(task_and_models, kind, beam, options):
    task, models = task_and_models
    for ours, theirs in translate_both(task, models[kind], beam, options):
        assert_same_hypotheses(ours, theirs)


@pytest.mark.parametrize("kind", ["collab", "transformer"])
@pytest.mark.parametrize("prefix_size", [1, 5])
def test_same_hypotheses_with_forced_prefixes_as_fairseq(task_and_models, kind, prefix_size):
    """--prefix-size: the targets' first tokens are forced; targets shorter than the prefix end in EOS and pad."""
    task, models = task_and_models
    for ours, theirs in translate_both(task, models[kind], 4, {"max_len_a": 1.2, "max_len_b": 2}, prefix_size):
        assert_same_hypotheses(ours, theirs)


def _hypothesis_lines(output: str):
    """fairseq-generate's H-/D-/P- lines, sorted: (kind and id, text, scores as floats)."""
    lines = []
    for line in output.splitlines():
        if line[:2] in ("H-", "D-"):
            name, score, text = line.split("\t")
            lines.append((name, text, [float(score)]))
        elif line.startswith("P-"):
            name, scores = line.split("\t")
            lines.append((name, "", [float(x) for x in scores.split()]))
    return sorted(lines)


def assert_same_lines(ours, theirs):
    assert len(ours) == len(theirs) >= 300
    for (name, text, scores), (their_name, their_text, their_scores) in zip(ours, theirs):
        assert (name, text) == (their_name, their_text)
        assert scores == pytest.approx(their_scores, abs=1e-4)


def test_fairseq_generate_with_the_task_prints_what_fairseq_prints(copy_data, collab_run):
    _, bin_dir = copy_data
    common = [bin_dir, "--user-dir", USER_DIR, "--path", collab_run / "checkpoint_last.pt", "--beam", "4",
              "--batch-size", "16", "--required-batch-size-multiple", "1", "--lenpen", "0.6", "--nbest", "3",
              "--prefix-size", "1"]  # fmt: skip
    with captured_logs() as log:
        ours = fairseq_generate(*common, "--task", "translation_fast", "--generator", "static")
    theirs = fairseq_generate(*common)
    assert "beam search: fixed batch x beam (4)" in log.getvalue()
    assert_same_lines(_hypothesis_lines(ours), _hypothesis_lines(theirs))


def test_auto_leaves_cpu_runs_to_fairseq_and_says_so(copy_data, collab_run):
    _, bin_dir = copy_data
    with captured_logs() as log:
        fairseq_generate(bin_dir, "--user-dir", USER_DIR, "--path", collab_run / "checkpoint_last.pt", "--task",
                         "translation_fast", "--max-sentences", "8", "--cpu")  # fmt: skip
    assert "beam search: fairseq's SequenceGenerator (the fixed-batch search does not do CPU inputs" in log.getvalue()


def test_options_it_lacks_go_to_fairseq_and_say_why(task_and_models):
    task, models = task_and_models
    generator = StaticBeamGenerator([models["collab"]], task.target_dictionary, use="always", beam_size=4,
                                    no_repeat_ngram_size=2)  # fmt: skip
    fairseq = SequenceGenerator([models["collab"]], task.target_dictionary, beam_size=4, no_repeat_ngram_size=2)
    sample = batches(task)[0]
    with captured_logs() as log:
        assert_same_hypotheses(generator.generate([], sample), fairseq.generate([], sample))
    assert "fairseq's SequenceGenerator (the fixed-batch search does not do --no-repeat-ngram-size)" in log.getvalue()


def test_the_hub_interface_of_a_translation_checkpoint_can_switch_to_it(copy_data, collab_run):
    from collab_fairseq.models.transformer_collab import TransformerCollabModel
    from collab_fairseq.tasks import TranslationFastTask

    _, bin_dir = copy_data
    hub = TransformerCollabModel.from_pretrained(str(collab_run), checkpoint_file="checkpoint_last.pt",
                                                 data_name_or_path=str(bin_dir))  # fmt: skip
    sentences = ["w1 w22 w3 w17", "w30 w5 w5 w8 w12 w39"]
    theirs = hub.translate(sentences, beam=4)
    hub.task = TranslationFastTask.from_task(hub.task, generator="static")
    with captured_logs() as log:
        assert hub.translate(sentences, beam=4) == theirs == ["W1 W22 W3 W17", "W30 W5 W5 W8 W12 W39"]
    assert "beam search: fixed batch x beam (4)" in log.getvalue()


@pytest.mark.parametrize("kind", ["collab", "transformer"])
@pytest.mark.parametrize("decoding", ["incremental", "static caches, length buckets"])
def test_both_decodings_find_what_fairseq_finds(task_and_models, kind, decoding):
    """The search over the models' own incremental state, and over static caches attended up to a length bucket and
    kept across batches (as the CUDA graphs run them: positions after the step and source padding masked)."""
    task, models = task_and_models
    model = models[kind]
    search = StaticBeamGenerator([model], task.target_dictionary, use="always", beam_size=5).fixed_batch
    fairseq = SequenceGenerator([model], task.target_dictionary, beam_size=5)
    steps = (
        IncrementalDecoding(fairseq.model) if decoding == "incremental" else StaticCacheDecoding(model, buckets=True)
    )
    reused = []
    for sample in batches(task):  # one decoding for all batches: those of the last one's shape reuse its buffers
        assert_same_hypotheses(search.search(steps, sample["net_input"]), fairseq.generate([model], sample))
        reused.append(getattr(steps, "shape", None))
    if decoding != "incremental":
        assert len(set(reused)) < len(reused)  # some batch did reuse the buffers (source padded to 16 positions)


def test_a_collaborative_layer_caches_its_shared_keys_once(task_and_models):
    """Self-attention cache per layer and row: D_k + H key entries (shared keys, content bias) against the
    transformer's H x d_k = C; the values are the same size."""
    task, models = task_and_models
    sample = batches(task)[0]
    sizes = {}
    for kind, model in models.items():
        decoding = StaticCacheDecoding(model)
        decoding.start(sample["net_input"], beam=4, max_len=20)
        sizes[kind] = decoding.cache_bytes()
    assert sizes["collab"]["keys"] / sizes["transformer"]["keys"] == (16 + 4) / 64
    assert sizes["collab"]["values"] == sizes["transformer"]["values"]


@pytest.mark.parametrize("kind", ["collab", "transformer"])
def test_a_step_over_static_caches_reads_nothing_on_the_host(task_and_models, kind, monkeypatch):
    """Between the encoder and the end of the search, the host reads one value: whether every sentence is
    finished, every ``check_every`` steps."""
    task, models = task_and_models
    model = models[kind]
    generator = StaticBeamGenerator([model], task.target_dictionary, use="always", beam_size=4, min_len=10,
                                    check_every=3)  # fmt: skip
    search = generator.fixed_batch
    decoding = StaticCacheDecoding(model, buckets=True)
    reads = HostReads()
    steps = []

    def start(*args):
        reads.counting = False
        StaticCacheDecoding.start(decoding, *args)
        reads.counting = True

    def step(tokens, step):
        steps.append(step)
        return StaticCacheDecoding.step(decoding, tokens, step)

    monkeypatch.setattr(decoding, "start", start)
    monkeypatch.setattr(decoding, "step", step)
    monkeypatch.setattr(search, "_hypotheses", lambda state: None)
    sample = batches(task)[0]
    with reads:
        search.search(decoding, sample["net_input"])
    assert len(steps) >= 12 and len(steps) % 3 == 0  # finished at a check
    assert [name for _, name, _, _ in reads.calls] == ["__bool__"] * (len(steps) // 3)


def test_a_kept_generator_sees_weights_changed_in_place(task_and_models):
    """Validation BLEU keeps one generator while training changes the weights in place: the static decoding's
    constants (stacked projections, mixing) are made again."""
    task, models = task_and_models
    model = copy.deepcopy(models["collab"])
    kept = StaticBeamGenerator([model], task.target_dictionary, use="always", beam_size=4)
    sample = batches(task)[0]
    kept.generate([model], sample)
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.self_attn.k_proj.weight.mul_(-1.5)
            layer.encoder_attn.mixing.mul_(0.5)
    fresh = StaticBeamGenerator([model], task.target_dictionary, use="always", beam_size=4)
    changed = fresh.generate([model], sample)
    assert_same_hypotheses(kept.generate([model], sample), changed)
    assert_same_hypotheses(
        SequenceGenerator([model], task.target_dictionary, beam_size=4).generate([], sample), changed
    )
