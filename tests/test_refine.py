import copy

import pytest
import torch

from litewhisper.errors import LiteWhisperError
from litewhisper.models.linears import LowRankLinear
from litewhisper.compression.refine import RefineConfig, _Targets, distillation_loss, refine, trainable_parameters


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
    targets = _Targets(teacher, features, hidden=False)
    assert distillation_loss(student, targets, features, val_idx, config) < distillation_loss(
        _svd_compress(teacher, 4), targets, features, val_idx, config)
    for k, v in student.named_parameters():
        if k in dense_before:
            assert torch.equal(v, dense_before[k]), k
        assert v.requires_grad == grad_flags[k]  # requires_grad flags are restored
    assert {k.rsplit(".", 1)[1] for k in trainable_parameters(student)} == {"weight1", "weight2", "bias"}


def test_hidden_loss_and_no_worse_guarantee(setup):
    teacher, student, features = setup
    before = {k: v.clone() for k, v in student.state_dict().items()}
    # a learning rate this large only makes things worse: the student must come back unchanged
    result = refine(student, teacher, features, RefineConfig(max_steps=4, lr=10.0, eval_every=2,
                                                             hidden_weight=1.0, val_fraction=0.34))
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
