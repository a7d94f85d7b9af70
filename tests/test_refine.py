import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from helpers import with_tokenizer
from litewhisper.compression.distill import IGNORE, pseudo_labels
from litewhisper.compression.refine import (
    RefineConfig,
    distillation_loss,
    objective_for,
    pull_distance,
    refine,
    trainable_parameters,
)
from litewhisper.errors import LiteWhisperError
from litewhisper.models.linears import LowRankLinear


def _svd_compress(encoder: torch.nn.Module, rank: int) -> torch.nn.Module:
    """A copy of `encoder` whose MLP linears are rank-`rank` truncated SVDs (a crude compressed student)."""
    student = copy.deepcopy(encoder)
    for layer in student.layers:
        for name in ("fc1", "fc2"):
            dense = getattr(layer, name)
            u, s, vh = torch.linalg.svd(dense.weight.detach().T, full_matrices=False)  # W^T: (in, out)
            low = LowRankLinear(dense.in_features, dense.out_features, rank)
            with torch.no_grad():
                low.weight1.copy_(u[:, :rank] * s[:rank])
                low.weight2.copy_(vh[:rank])
                low.bias.copy_(dense.bias)
            setattr(layer, name, low)
    return student


@pytest.fixture
def setup(tiny_model):
    teacher = tiny_model.model.encoder
    torch.manual_seed(1)
    features = torch.randn(6, 80, 3000)
    return teacher, _svd_compress(teacher, rank=4), features


def test_refinement_lowers_distillation_loss(setup):
    teacher, student, features = setup
    dense_before = {k: v.clone() for k, v in student.named_parameters() if ".fc" not in k}
    grad_flags = {k: v.requires_grad for k, v in student.named_parameters()}
    config = RefineConfig(max_steps=30, lr=3e-3, eval_every=10, patience=5, val_fraction=0.34)
    result = refine(student, teacher, features, config)
    assert result.best_val < 0.8 * result.initial_val
    assert len(result.val_losses) == 4 and result.val_losses[0] == result.initial_val
    # the best state is what the student holds now, and only the factors moved
    val_idx = list(range(6))  # any subset: recompute on the held-out windows through the public helper
    assert distillation_loss(objective_for(student, teacher, features, config), val_idx) < distillation_loss(
        objective_for(_svd_compress(teacher, 4), teacher, features, config), val_idx
    )
    for k, v in student.named_parameters():
        if k in dense_before:
            assert torch.equal(v, dense_before[k]), k
        assert v.requires_grad == grad_flags[k]  # requires_grad flags are restored
    assert {k.rsplit(".", 1)[1] for k in trainable_parameters(student)} == {"weight1", "weight2", "bias"}


def test_hidden_loss_and_no_worse_guarantee(setup):
    teacher, student, features = setup
    before = {k: v.clone() for k, v in student.state_dict().items()}
    # a learning rate this large only makes things worse: the student must come back unchanged
    result = refine(
        student,
        teacher,
        features,
        RefineConfig(max_steps=4, lr=10.0, eval_every=2, hidden_weight=1.0, val_fraction=0.34),
    )
    assert result.best_step == 0 and result.best_val == result.initial_val
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_errors(setup, tiny_model):
    teacher, _, features = setup
    with pytest.raises(LiteWhisperError, match="no low-rank layers"):
        refine(copy.deepcopy(teacher), teacher, features)
    with pytest.raises(LiteWhisperError, match="trainable"):
        RefineConfig(trainable="decoder")
    with pytest.raises(LiteWhisperError, match="at least 2 windows"):
        refine(_svd_compress(teacher, 4), teacher, features[:1])


def _svd_student(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    """A copy of a whole Whisper model whose encoder MLPs are rank-`rank` truncated SVDs."""
    student = copy.deepcopy(model)
    student.model.encoder = _svd_compress(model.model.encoder, rank)
    return student


def _random_transcripts(n: int, seed: int = 2) -> list[torch.Tensor]:
    """Stand-in transcripts: <|startoftranscript|>, 3-9 text tokens, <|endoftext|> (tiny.en's ids)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 10, (n,), generator=gen).tolist()
    return [torch.tensor([50257, *torch.randint(0, 50000, (k,), generator=gen).tolist(), 50256]) for k in lengths]


def test_decoder_objective_pseudo_labels_and_training(tiny_model):
    """Decoder-aware refinement: the given transcripts (prompt + text + end-of-text) are the labels, the KL to
    the teacher is 0 for the teacher itself, and training lowers it for a student."""
    teacher, _ = with_tokenizer(tiny_model)
    torch.manual_seed(2)
    features = torch.randn(6, 80, 3000)
    transcripts = _random_transcripts(6)
    labels = pseudo_labels(teacher, features, transcripts, batch_size=4)
    assert labels.states.shape[:2] == (6, teacher.config.max_source_positions) and labels.eot == 50256
    inputs, targets, _ = labels.batch([0, 1])
    assert torch.equal(inputs[0, : len(labels.tokens[0]) - 1], labels.tokens[0][:-1])
    assert torch.equal(targets[0, : len(labels.tokens[0]) - 1], labels.tokens[0][1:])
    assert (targets[0, len(labels.tokens[0]) - 1 :] == IGNORE).all()
    with pytest.raises(LiteWhisperError, match="one per window"):
        pseudo_labels(teacher, features, transcripts[:5])

    config = RefineConfig(objective="decoder", max_steps=8, lr=3e-2, eval_every=4, patience=5, val_fraction=0.34)
    config = dataclasses.replace(config, ce_weight=0.5)
    same = objective_for(
        copy.deepcopy(teacher), teacher, features, RefineConfig(objective="decoder", ce_weight=0), transcripts
    )
    assert distillation_loss(same, [0, 1, 2]) == pytest.approx(0.0, abs=1e-5)  # KL(teacher ‖ teacher)
    student = _svd_student(teacher, rank=2)
    decoder_before = {k: v.clone() for k, v in student.model.decoder.state_dict().items()}
    result = refine(student, teacher, features, config, transcripts)
    assert result.best_val < result.initial_val
    assert all(torch.equal(v, decoder_before[k]) for k, v in student.model.decoder.state_dict().items())
    with pytest.raises(LiteWhisperError, match="transcripts"):
        refine(_svd_student(teacher, rank=2), teacher, features, config)


def test_pull_toward_the_initial_factors(tiny_model):
    """The L2 pull: 0 at the start, 1 at zero factors, its gradient points back to the start; refinement with
    it starts from the same loss as without (the penalty is 0 at step 1)."""
    teacher, _ = with_tokenizer(tiny_model)
    student = _svd_student(teacher, rank=2)
    params = trainable_parameters(student.model.encoder)
    start = {k: v.detach().clone() for k, v in params.items()}
    assert float(pull_distance(params, start).detach()) == 0.0
    assert float(pull_distance({k: torch.zeros_like(v) for k, v in start.items()}, start)) == pytest.approx(1.0)
    moved = {k: (v + 0.1).requires_grad_() for k, v in start.items()}
    pull_distance(moved, start).backward()
    assert all((moved[k].grad > 0).all() for k in moved)  # descending the pull moves each factor back
    torch.manual_seed(3)
    features, transcripts = torch.randn(4, 80, 3000), _random_transcripts(4)
    first = []
    for pull in (0.0, 100.0):
        config = RefineConfig(objective="decoder", max_steps=2, eval_every=2, val_fraction=0.25, pull=pull)
        first.append(refine(_svd_student(teacher, rank=2), teacher, features, config, transcripts).train_losses[0])
    assert first[0] == pytest.approx(first[1])
    with pytest.raises(LiteWhisperError, match="pull"):
        RefineConfig(pull=-1.0)
    with pytest.raises(LiteWhisperError, match="max_minutes"):
        RefineConfig(max_minutes=-1.0)


@pytest.mark.real
def test_window_transcripts_are_the_one_decoders(real_tiny_en):
    """Pseudo-labels come from `transcribe` with its defaults: the token sequence holds the transcript's text
    between timestamp tokens, after the English-only prompt."""
    from helpers import SHARED_DATA, shared_manifest
    from litewhisper.audio.load import load_audio
    from litewhisper.compression.distill import window_transcripts
    from litewhisper.decode.transcribe import transcribe

    rows = shared_manifest(split="calib")[:2]
    windows = [load_audio(SHARED_DATA / r["path"]) for r in rows]
    tokens = window_transcripts(real_tiny_en, windows, transcribe)
    tokenizer = real_tiny_en.processor.tokenizer
    first_stamp = tokenizer.convert_tokens_to_ids("<|0.00|>")
    for seq, result in zip(tokens, transcribe(real_tiny_en, windows), strict=True):
        ids = seq.tolist()
        assert ids[0] == tokenizer.convert_tokens_to_ids("<|startoftranscript|>") and ids[-1] == 50256
        assert first_stamp <= ids[1] and first_stamp <= ids[-2]  # segments open and close with timestamps
        text = tokenizer.decode([t for t in ids if t < 50256], skip_special_tokens=True)
        assert text.split() == result.text.split()
    with pytest.raises(LiteWhisperError, match="whole Whisper model"):
        window_transcripts(real_tiny_en.model, windows, transcribe)


def test_decoder_objective_needs_whole_model(setup):
    teacher, student, features = setup
    with pytest.raises(LiteWhisperError, match="whole Whisper model"):
        refine(student, teacher, features, RefineConfig(objective="decoder"), _random_transcripts(6))
    with pytest.raises(LiteWhisperError, match="objective"):
        RefineConfig(objective="logits")


def test_warmup_and_gradient_clipping_settings():
    from litewhisper.compression.refine import _lr_factor

    config = RefineConfig(max_steps=100, warmup=0.1, max_grad_norm=1.0)
    factors = [_lr_factor(s, config) for s in range(100)]
    assert factors[0] == 0.1 and factors[9] == 1.0 and factors[:10] == sorted(factors[:10])  # linear warm-up
    assert factors[10] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1))) and factors[99] < 0.01  # then cosine
    assert _lr_factor(0, RefineConfig(max_steps=100)) == 1.0  # no warm-up: the former schedule
    for bad in (dict(warmup=1.0), dict(warmup=-0.1), dict(max_grad_norm=0.0)):
        with pytest.raises(LiteWhisperError, match="warmup must be in"):
            RefineConfig(**bad)


def test_compress_flags_set_the_recipe():
    from litewhisper.cli import build_parser
    from litewhisper.cli.compress import compress_policy

    argv = ["compress", "tiny.en", "-o", "x", "--refine-steps", "100", "--refine-objective", "decoder"]
    argv += ["--refine-lr", "1e-5", "--refine-warmup", "0.1", "--refine-clip", "1.0", "--refine-windows", "66"]
    argv += ["--refine-pull", "0.5", "--refine-minutes", "20", "--refine-window", "both", "--refine-hidden", "2"]
    refine_config = compress_policy(build_parser().parse_args(argv)).refine
    assert refine_config.hidden_weight == 2.0
    assert (refine_config.pull, refine_config.max_minutes, refine_config.student_window) == (0.5, 20.0, "both")
    assert (refine_config.lr, refine_config.warmup, refine_config.max_grad_norm) == (1e-5, 0.1, 1.0)
    assert (refine_config.windows, refine_config.max_steps, refine_config.objective) == (66, 100, "decoder")
    plain = compress_policy(build_parser().parse_args(["compress", "tiny.en", "-o", "x", "--refine-steps", "5"]))
    assert plain.refine == RefineConfig(max_steps=5, objective="decoder")  # the former defaults otherwise


def test_compress_recovers_on_the_one_decoders_transcripts(tiny_model, monkeypatch):
    """compress with the decoder objective transcribes the refinement windows with the one decoder (the teacher
    bundle: the original model and its processor), then trains the student's factors on those labels."""
    import numpy as np

    from litewhisper.compression import api, recovery
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.models.load import WhisperBundle

    model, processor = with_tokenizer(tiny_model)
    bundle = WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)
    seen = {}

    def fake_transcripts(teacher_bundle, windows, options=None):
        seen.update(model=teacher_bundle.model, windows=len(windows))
        return _random_transcripts(len(windows))

    monkeypatch.setattr(recovery, "window_transcripts", fake_transcripts)
    clips = [np.random.default_rng(i).standard_normal(16000 * 3).astype(np.float32) for i in range(4)]
    refine_config = RefineConfig(objective="decoder", max_steps=2, eval_every=1, val_fraction=0.25, windows=3)
    result = api.compress(bundle, clips, SizeBudget(0.95, sensitivity=False, multiple_of=4, refine=refine_config))
    assert seen == {"model": model, "windows": 3}  # the original transcribes; the input model is untouched
    assert "refine" in result.timings and result.model is not model
    from litewhisper.compression.distill import window_transcripts

    nothing = lambda b, w: []  # noqa: E731
    with pytest.raises(LiteWhisperError, match="WhisperBundle"):  # a bare model has no tokenizer to decode with
        window_transcripts(model, clips, nothing)
    with pytest.raises(LiteWhisperError, match="at most 30"):
        window_transcripts(bundle, [np.zeros(16000 * 31, dtype=np.float32)], nothing)
    with pytest.raises(LiteWhisperError, match="transcriber=litewhisper.transcribe"):  # decoding comes from above
        window_transcripts(bundle, clips, None)


def test_refine_audio_sources(tmp_path):
    """--refine-audio: the calibration clips, built-in synthetic clips and a folder, in that order; bad values
    say what was expected."""
    import numpy as np
    import soundfile as sf

    from litewhisper.cli import build_parser
    from litewhisper.cli.compress import _refine_audio, compress_policy

    sf.write(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    base = ["compress", "tiny.en", "-o", "x", "--refine-steps", "5", "--refine-audio"]
    args = build_parser().parse_args(base + ["calibration", "synthetic:2", str(tmp_path)])
    clips = _refine_audio(args, ["c1", "c2"])
    assert clips[:2] == ["c1", "c2"] and len(clips) == 5 and str(clips[4].path).endswith("a.wav")
    assert all(isinstance(c, np.ndarray) and c.ndim == 1 for c in clips[2:4])
    assert _refine_audio(build_parser().parse_args(base[:-1]), ["c1"]) is None  # default: the calibration audio
    with pytest.raises(LiteWhisperError, match="synthetic:N"):
        _refine_audio(build_parser().parse_args(base + ["synthetic:many"]), [])
    with pytest.raises(LiteWhisperError, match="give --refine-steps"):
        compress_policy(build_parser().parse_args(["compress", "tiny.en", "-o", "x", "--refine-audio", "calibration"]))


def test_recovery_estimate_scales_timed_step(tiny_model, monkeypatch):
    """plan's minutes: one decode and one training step timed here, scaled by labels, steps and validations;
    the model's gradients and requires_grad flags are left as they were."""
    from litewhisper.compression import recovery
    from litewhisper.compression.recovery import estimate_recovery
    from litewhisper.models.load import WhisperBundle

    model, processor = with_tokenizer(tiny_model)
    bundle = WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)
    monkeypatch.setattr(recovery, "window_transcripts", lambda b, w, options=None: _random_transcripts(len(w)))
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    config = RefineConfig(objective="decoder", max_steps=100, batch_size=2, eval_every=10, val_fraction=0.1)
    est = estimate_recovery(bundle, config, 50, None)  # labels faked: no transcriber needed
    assert est.decode_s > 0 and est.step_s > 0
    expected = 50 * (est.decode_s + est.step_s / 3) + 200 * est.step_s + 11 * 5 * est.step_s / 3
    assert est.minutes == pytest.approx(expected / 60)
    assert "100 steps of 2 windows" in est.describe(config, 50)
    assert all(p.grad is None and p.requires_grad == flags[k] for k, p in model.named_parameters())


@pytest.fixture
def cli_random_bundle(tiny_model, tmp_path, monkeypatch):
    """The CLI loads a tiny random bundle for any model name; 3 noise clips in tmp_path; labels are random."""
    import soundfile as sf

    import litewhisper.cli.compress as cli_compress
    from litewhisper.compression import recovery
    from litewhisper.models.load import WhisperBundle

    model, processor = with_tokenizer(tiny_model)
    bundle = WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", np.random.default_rng(i).standard_normal(16000 * 3).astype(np.float32), 16000)
    monkeypatch.setattr(cli_compress, "load_bundle", lambda args, dtype=None: bundle)
    monkeypatch.setattr(recovery, "window_transcripts", lambda b, w, options=None: _random_transcripts(len(w)))
    return bundle


def test_cli_plan_says_what_recovery_costs(cli_random_bundle, tmp_path, capsys):
    from litewhisper.cli import main

    flags = ["--calibration", str(tmp_path), "--target-size", "0.95", "--multiple-of", "4", "--no-sensitivity"]
    flags += ["--refine-steps", "40", "--refine-objective", "decoder", "--refine-windows", "10", "--quiet"]
    assert main(["plan", "random", *flags]) == 0
    out = capsys.readouterr().out
    assert "refinement: about" in out and "(3 windows transcribed" in out  # 10 asked, 3 clips given


def test_interrupted_refinement_resumes_where_it_stopped(tiny_model, tmp_path, monkeypatch):
    """A run stopped by its time limit leaves its state; the same run started again continues from there and
    ends exactly where an uninterrupted run ends. recover() keeps the labels beside it (transcribed once)."""
    from litewhisper.compression import recovery

    teacher, processor = with_tokenizer(tiny_model)
    torch.manual_seed(4)
    features, transcripts = torch.randn(5, 80, 3000), _random_transcripts(5)
    config = RefineConfig(objective="decoder", max_steps=8, lr=3e-2, eval_every=4, patience=5, val_fraction=0.2)
    whole = _svd_student(teacher, rank=2)
    expected = refine(whole, teacher, features, config, transcripts)
    state = tmp_path / "state.pt"
    parted = _svd_student(teacher, rank=2)
    first = refine(parted, teacher, features, dataclasses.replace(config, max_minutes=0.0), transcripts, state)
    assert first.steps == 4 and state.is_file()
    second = refine(parted, teacher, features, config, transcripts, state)
    assert second.steps == 8 and second.train_losses == pytest.approx(expected.train_losses)
    parted_state = parted.model.encoder.state_dict()
    for k, a in whole.model.encoder.state_dict().items():
        assert torch.allclose(a, parted_state[k], atol=1e-6), k
    other = dataclasses.replace(config, lr=1e-3)  # other settings: the saved state is not used
    assert refine(_svd_student(teacher, rank=2), teacher, features, other, transcripts, state).train_losses[0] == (
        pytest.approx(expected.train_losses[0])
    )

    from litewhisper.models.load import WhisperBundle

    calls = []
    monkeypatch.setattr(
        recovery, "window_transcripts", lambda b, w, o=None: calls.append(1) or _random_transcripts(len(w))
    )
    bundle = WhisperBundle(model=teacher, processor=processor, name="tiny-random", path=None)
    clips = [np.random.default_rng(i).standard_normal(16000 * 2).astype(np.float32) for i in range(3)]
    short = dataclasses.replace(config, max_steps=2, eval_every=1, val_fraction=0.34, windows=3)
    for _ in range(2):
        recovery.recover(bundle, _svd_student(teacher, rank=2), teacher, clips, short, tmp_path / "run")
    assert len(calls) == 1 and (tmp_path / "run" / recovery.LABELS_FILE).is_file()


def test_cli_compress_keeps_recovery_state_until_saved(cli_random_bundle, tmp_path, monkeypatch):
    from litewhisper.cli import main
    from litewhisper.compression import api, recovery
    from litewhisper.decode.transcribe import transcribe

    dirs = []

    def recording(*args):
        *_, state_dir, transcriber = args
        assert transcriber is transcribe  # the CLI hands compress the one decoder
        dirs.append(state_dir)
        result = recovery.recover(*args)
        assert (state_dir / recovery.STATE_FILE).is_file() and (state_dir / recovery.LABELS_FILE).is_file()
        return result

    monkeypatch.setattr(api, "recover", recording)
    out = tmp_path / "out"
    flags = ["--calibration", str(tmp_path), "--target-size", "0.95", "--multiple-of", "4", "--no-sensitivity"]
    flags += ["--refine-steps", "2", "--refine-objective", "decoder", "--refine-windows", "3", "--quiet"]
    assert main(["compress", "random", "-o", str(out), *flags]) == 0
    assert dirs == [tmp_path / "out.recovery"] and (out / "config.json").is_file() and not dirs[0].exists()


def test_short_window_student_learns_from_the_full_window_teacher(tiny_model):
    """student_window='auto': the student's encoder reads max(seconds + 2, 10) s of frames, the teacher full
    windows; the teacher as its own student is then no longer at KL 0 and training lowers that loss; 'both' is
    the mean of the two."""
    teacher, _ = with_tokenizer(tiny_model)
    torch.manual_seed(5)
    features, transcripts, seconds = torch.randn(4, 80, 3000), _random_transcripts(4), [3.0, 4.5, 9.0, 20.0]
    kl = dict(objective="decoder", ce_weight=0.0)
    losses = {}
    for mode in ("full", "auto", "both"):
        config = RefineConfig(student_window=mode, **kl)
        objective = objective_for(copy.deepcopy(teacher), teacher, features, config, transcripts, seconds)
        losses[mode] = distillation_loss(objective, [0, 1, 2, 3])
    assert losses["full"] == pytest.approx(0.0, abs=1e-5) and losses["auto"] > 1e-6
    assert losses["both"] == pytest.approx(losses["auto"] / 2, rel=1e-4)
    config = RefineConfig(student_window="auto", trainable="encoder", max_steps=6, lr=1e-2, eval_every=3, **kl)
    student = copy.deepcopy(teacher)
    result = refine(
        student, teacher, features, dataclasses.replace(config, val_fraction=0.25), transcripts, None, seconds
    )
    assert result.best_val < result.initial_val
    with pytest.raises(LiteWhisperError, match="seconds of audio"):
        objective_for(student, teacher, features, config, transcripts)
    with pytest.raises(LiteWhisperError, match="student_window"):
        RefineConfig(student_window="half")
    with pytest.raises(LiteWhisperError, match="decoder objective"):
        RefineConfig(student_window="auto", objective="encoder")


def test_decoder_hidden_state_term(tiny_model):
    """hidden_weight adds the decoder layers' relative MSE (ACFT): 0 for the teacher itself, > 0 for a student,
    and exactly hidden_weight × that error on top of the KL."""
    teacher, _ = with_tokenizer(tiny_model)
    torch.manual_seed(6)
    features, transcripts = torch.randn(3, 80, 3000), _random_transcripts(3)
    student = _svd_student(teacher, rank=2)

    def loss(model, weight):
        config = RefineConfig(objective="decoder", hidden_weight=weight, ce_weight=0.0)
        return distillation_loss(objective_for(model, teacher, features, config, transcripts), [0, 1, 2])

    assert loss(copy.deepcopy(teacher), 5.0) == pytest.approx(0.0, abs=1e-5)
    plain, with_hidden, doubled = loss(student, 0.0), loss(student, 1.0), loss(student, 2.0)
    assert with_hidden > plain and doubled - plain == pytest.approx(2 * (with_hidden - plain), rel=1e-4)
