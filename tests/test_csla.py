"""CSLA spec -> grad mult + eq. 14 init; training equivalence over random specs (float64)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reparam.csla import Branch, CSLABlock, CSLASpec, attach, grad_mult, init_weight, specs_of
from reparam.optim import RepOptAdamW, RepOptSGD, grad_mults
from reparam.testing import rel_err, train_twins

DT = torch.float64


def test_grad_mult_is_the_paper_formula_for_a_repopt_block():
    s, t = torch.tensor([0.5, -2.0, 1.5]), torch.tensor([1.0, 0.3, -0.7])
    spec = CSLASpec(3, 3, (Branch(s, 3), Branch(t, 1)), identity=1.0)
    expected = (s**2).view(3, 1, 1, 1).expand(3, 3, 3, 3).clone()
    expected[:, :, 1, 1] += (t**2).view(3, 1)
    expected[range(3), range(3), 1, 1] += 1
    assert torch.equal(grad_mult(spec, power=2), expected)
    expected_p1 = s.abs().view(3, 1, 1, 1).expand(3, 3, 3, 3).clone()
    expected_p1[:, :, 1, 1] += t.abs().view(3, 1)
    expected_p1[range(3), range(3), 1, 1] += 1
    assert torch.equal(grad_mult(spec, power=1), expected_p1)


def test_init_weight_is_eq14_with_fresh_branch_weights():
    spec = CSLASpec(4, 4, (Branch(0.5, 3), Branch(2.0, 1)), identity=1.0)
    w = init_weight(spec, dtype=DT, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    w3 = torch.empty(4, 4, 3, 3, dtype=DT).uniform_(-1 / 6, 1 / 6, generator=gen)
    w1 = torch.empty(4, 4, 1, 1, dtype=DT).uniform_(-0.5, 0.5, generator=gen)
    expected = 0.5 * w3
    expected[:, :, 1:2, 1:2] += 2.0 * w1
    expected[range(4), range(4), 1, 1] += 1
    assert rel_err(w, expected) <= 1e-15


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(in_channels=2, out_channels=2, branches=(Branch(1.0, 5),)), "cannot be centred"),
        (dict(in_channels=2, out_channels=2, branches=(Branch(1.0, 2),)), "cannot be centred"),
        (
            dict(in_channels=2, out_channels=4, branches=(Branch(1.0, 3),), identity=1.0),
            "in == out",
        ),
        (dict(in_channels=3, out_channels=4, branches=(Branch(1.0, 3),), groups=2), "divisible"),
        (dict(in_channels=2, out_channels=2, branches=()), "at least one"),
        (
            dict(in_channels=2, out_channels=2, branches=(Branch(1.0, 3),), kernel_size=None),
            "linear",
        ),
    ],
)
def test_bad_specs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CSLASpec(**kwargs)


@pytest.mark.parametrize(
    "scale, match",
    [
        (torch.tensor([1.0, float("nan")]), "NaN"),
        (torch.ones(3), "shape"),
    ],
)
def test_bad_scales_are_refused(scale, match):
    with pytest.raises(ValueError, match=match):
        grad_mult(CSLASpec(2, 2, (Branch(scale, 3),)))


def test_attach_checks_the_shape_and_grad_mults_finds_it():
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    spec = CSLASpec(4, 4, (Branch(2.0, 3), Branch(-1.0, 1)))
    with pytest.raises(ValueError, match="shape"):
        attach(conv, CSLASpec(4, 4, (Branch(1.0, 5),), kernel_size=5))
    model = nn.Sequential(attach(conv, spec), nn.ReLU())
    assert specs_of(conv) == {"weight": spec}
    masks = grad_mults(model)
    assert list(masks) == ["0.weight"] and torch.equal(masks["0.weight"], grad_mult(spec))


NONZERO = st.floats(-2, 2).filter(lambda v: abs(v) > 0.05)


@st.composite
def csla_specs(draw):
    """Random CSLA specs: kernel sizes, groups, scalar / per-channel scales with any sign."""
    groups = draw(st.sampled_from([1, 2, 4]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    k = draw(st.sampled_from([1, 3, 5]))
    sizes = draw(
        st.lists(st.sampled_from([s for s in (1, 3, 5) if s <= k]), min_size=1, max_size=3)
    )

    def scale():
        if draw(st.booleans()):
            return draw(NONZERO)
        values = draw(st.lists(NONZERO, min_size=cout, max_size=cout))
        return torch.tensor(values, dtype=DT)

    branches = tuple(Branch(scale(), size) for size in sizes)
    stride = draw(st.sampled_from([1, 2]))
    identity = None
    if cin == cout and stride == 1 and draw(st.booleans()):
        identity = scale()
    spec = CSLASpec(cin, cout, branches, kernel_size=k, groups=groups, identity=identity)
    return spec, stride


def train_errors(imaginary, target, reference_opt, repopt, shape):
    """4 steps side by side on the same random inputs of ``shape``: (held-out output error,
    weight vs the block's equivalent weight)."""
    outputs = train_twins(
        imaginary,
        target,
        reference_opt,
        repopt,
        steps=4,
        batch=lambda gen: (torch.randn(*shape, generator=gen, dtype=DT),),
        eval_mode=True,
    )
    return rel_err(*outputs), rel_err(target.weight, imaginary.equivalent_weight())


@settings(max_examples=20, deadline=None)
@given(case=csla_specs(), nesterov=st.booleans())
def test_repopt_sgd_trains_any_csla_spec_exactly(case, nesterov):
    spec, stride = case
    torch.manual_seed(0)
    imaginary = CSLABlock(spec, stride=stride, dtype=DT)
    target = imaginary.to_target()
    kw = dict(lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=1e-2)
    errs = train_errors(
        imaginary,
        target,
        torch.optim.SGD(imaginary.parameters(), **kw),
        RepOptSGD(target, **kw),
        shape=(2, spec.in_channels, 7, 7),
    )
    assert max(errs) <= 1e-10, errs


@settings(max_examples=10, deadline=None)
@given(case=csla_specs())
def test_repopt_adamw_tracks_any_csla_spec_up_to_eps(case):
    spec, stride = case
    torch.manual_seed(0)
    imaginary = CSLABlock(spec, stride=stride, dtype=DT)
    target = imaginary.to_target()
    kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-12, weight_decay=1e-2)
    errs = train_errors(
        imaginary,
        target,
        torch.optim.AdamW(imaginary.parameters(), **kw),
        RepOptAdamW(target, **kw),
        shape=(2, spec.in_channels, 7, 7),
    )
    assert max(errs) <= 1e-6, errs


@settings(max_examples=10, deadline=None)
@given(cin=st.integers(1, 5), cout=st.integers(1, 5), a=NONZERO, b=NONZERO, identity=st.booleans())
def test_linear_branches_train_exactly(cin, cout, a, b, identity):
    identity = identity and cin == cout
    spec = CSLASpec(
        cin, cout, (Branch(a), Branch(b)), kernel_size=None, identity=1.0 if identity else None
    )
    imaginary = CSLABlock(spec, dtype=DT)
    target = imaginary.to_target()
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-2)
    errs = train_errors(
        imaginary,
        target,
        torch.optim.SGD(imaginary.parameters(), **kw),
        RepOptSGD(target, **kw),
        shape=(3, cin),
    )
    assert max(errs) <= 1e-10, errs
