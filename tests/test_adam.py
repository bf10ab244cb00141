"""Instant-NGP's Adam step for hash tables (radfield.training.adam): against a float64 loop over
the entries, torch's Adam where every entry is touched, and across a checkpoint."""

import math

import pytest
import torch

from radfield.training import adam as adam_mod
from radfield.training.adam import Adam, sparse_adam_reference, sparse_adam_step

BETAS, EPS, LR = (0.9, 0.99), 1e-15, 0.01


def float64_loop(p, g, m, v, k, lr, betas, eps):
    """The step entry by entry in float64 with exact powers: tiny-cuda-nn's rule, torch's eps."""
    b1, b2 = betas
    for i in range(len(p)):
        if g[i] == 0:
            continue
        k[i] += 1
        m[i] = b1 * m[i] + (1 - b1) * g[i]
        v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
        p[i] -= lr / (1 - b1 ** k[i]) * m[i] / (math.sqrt(v[i]) / math.sqrt(1 - b2 ** k[i]) + eps)


def sparse_grads(n, steps, seed=0):
    """Gradients with about 60 % zero entries, a different pattern each step (whole chunks of 16
    zero too, which the kernel skips)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        g = torch.randn(n, generator=gen) * 10 ** torch.empty(n).uniform_(-3, 0, generator=gen)
        g[torch.rand(n, generator=gen) < 0.6] = 0
        g[32:64] = 0
        out.append(g)
    return out


@pytest.mark.parametrize("path", ["kernel", "reference"])
def test_step_matches_a_float64_loop(path):
    n = 203  # not a multiple of the kernel's chunk
    p0 = torch.randn(n, generator=torch.Generator().manual_seed(1))
    p, m, v, k = p0.clone(), torch.zeros(n), torch.zeros(n), torch.zeros(n)
    P, M, V, K = (t.double().tolist() for t in (p0, m, v, k))
    for g in sparse_grads(n, 12):
        if path == "kernel":
            sparse_adam_step([p], [g], [m], [v], [k], LR, BETAS, 1e-8)
        else:
            sparse_adam_reference(p, g, m, v, k, LR, BETAS, 1e-8)
        float64_loop(P, g.double().tolist(), M, V, K, LR, BETAS, 1e-8)
    assert torch.equal(k, torch.tensor(K, dtype=torch.float32))
    torch.testing.assert_close(p.double(), torch.tensor(P, dtype=torch.float64), rtol=0, atol=2e-6)
    torch.testing.assert_close(m.double(), torch.tensor(M, dtype=torch.float64), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(v.double(), torch.tensor(V, dtype=torch.float64), rtol=1e-5, atol=1e-12)
    assert k.max() < 12 and k.min() == 0  # entries skipped in some steps, and in all (32..63)


def test_kernel_equals_the_reference():
    assert adam_mod._KERNEL.load() is not None
    n = 1000
    a = [torch.randn(n), torch.zeros(n), torch.zeros(n), torch.zeros(n)]
    b = [t.clone() for t in a]
    for g in sparse_grads(n, 8, seed=3):
        sparse_adam_step([a[0]], [g], [a[1]], [a[2]], [a[3]], LR, BETAS, EPS)
        sparse_adam_reference(*b[:1], g, *b[1:], LR, BETAS, EPS)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-9)  # float32 rounding (torch divides differently)


def test_untouched_entries_keep_value_moments_and_count():
    n = 64
    p, m, v, k = torch.randn(n), torch.rand(n), torch.rand(n), torch.full((n,), 7.0)
    before = [t.clone() for t in (p, m, v, k)]
    g = torch.zeros(n)
    g[::5] = 0.3
    sparse_adam_step([p], [g], [m], [v], [k], LR, BETAS, EPS)
    off = g == 0
    for now, then in zip((p, m, v, k), before):
        assert torch.equal(now[off], then[off])
        assert (now[~off] != then[~off]).all()
    assert (k[~off] == 8).all()


def test_first_step_moves_each_touched_entry_by_the_learning_rate():
    """k = 1: m = 0.1 g, v = 0.01 g^2, both corrected back to g and g^2: the step is lr sign(g)."""
    p, g = torch.zeros(4), torch.tensor([0.5, -2.0, 0.0, 1e-3])
    m, v, k = torch.zeros(4), torch.zeros(4), torch.zeros(4)
    sparse_adam_step([p], [g], [m], [v], [k], LR, BETAS, EPS)
    torch.testing.assert_close(p, torch.tensor([-LR, LR, 0.0, -LR]), rtol=1e-6, atol=0)


def test_every_entry_touched_is_torch_adam():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(300, 2))
    b = torch.nn.Parameter(a.detach().clone())
    ours = Adam([{"params": [a], "sparse": True}], lr=LR, betas=BETAS, eps=EPS)
    torchs = torch.optim.Adam([b], lr=LR, betas=BETAS, eps=EPS, foreach=False)
    for step in range(20):
        g = torch.randn(300, 2) + 0.1  # no zeros
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        torchs.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)


def test_dense_groups_are_torch_adam_and_sparse_ones_skip_zeros():
    torch.manual_seed(0)
    table, weight = torch.nn.Parameter(torch.randn(50, 2)), torch.nn.Parameter(torch.randn(4, 4))
    ref_weight = torch.nn.Parameter(weight.detach().clone())
    opt = Adam([{"params": [table], "sparse": True}, {"params": [weight], "weight_decay": 1e-3}],
               lr=LR, betas=BETAS, eps=EPS)
    ref = torch.optim.Adam([ref_weight], lr=LR, betas=BETAS, eps=EPS, weight_decay=1e-3, foreach=False)
    g = torch.zeros(50, 2)
    g[:10] = 1.0
    for _ in range(3):
        table.grad, weight.grad, ref_weight.grad = g.clone(), torch.ones(4, 4), torch.ones(4, 4)
        before = table.detach().clone()
        opt.step()
        ref.step()
        assert torch.equal(table[10:], before[10:]) and (table[:10] != before[:10]).all()
        assert table.grad is not None  # the gradients are left where they were
    torch.testing.assert_close(weight.detach(), ref_weight.detach(), rtol=0, atol=1e-6)


def test_sparse_groups_refuse_weight_decay():
    with pytest.raises(Exception, match="weight decay"):
        Adam([{"params": [torch.nn.Parameter(torch.zeros(3))], "sparse": True, "weight_decay": 0.1}])


def grads_for(step, shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(step))
    g[torch.rand(shape, generator=torch.Generator().manual_seed(100 + step)) < 0.5] = 0
    return g


def test_checkpoint_resumes_exactly(tmp_path):
    def run(steps, p, opt, start=0):
        for s in range(start, start + steps):
            p.grad = grads_for(s, p.shape)
            opt.step()

    p = torch.nn.Parameter(torch.randn(40, 2, generator=torch.Generator().manual_seed(5)))
    q = torch.nn.Parameter(p.detach().clone())
    opt = Adam([{"params": [p], "sparse": True}], lr=LR, betas=BETAS, eps=EPS)
    run(7, p, opt)
    q_opt = Adam([{"params": [q], "sparse": True}], lr=LR, betas=BETAS, eps=EPS)
    run(3, q, q_opt)
    torch.save(q_opt.state_dict(), tmp_path / "opt.pt")
    resumed = Adam([{"params": [q], "sparse": True}], lr=LR, betas=BETAS, eps=EPS)
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt"))
    run(4, q, resumed, start=3)
    assert torch.equal(p.detach(), q.detach())
    assert torch.equal(opt.state[p]["entry_steps"], resumed.state[q]["entry_steps"])


def test_resumes_a_state_saved_by_torch_adam():
    """An older checkpoint's table state: every entry took every one of its 5 steps."""
    p = torch.nn.Parameter(torch.randn(30, 2))
    old = torch.optim.Adam([p], lr=LR, betas=BETAS, eps=EPS, fused=True)
    for s in range(5):
        p.grad = torch.randn(30, 2) + 1.0
        old.step()
    opt = Adam([{"params": [p], "sparse": True}], lr=LR, betas=BETAS, eps=EPS)
    opt.load_state_dict(old.state_dict())
    assert opt.param_groups[0]["sparse"]  # the flag as configured, not as saved (absent)
    m, v = (opt.state[p][key].clone() for key in ("exp_avg", "exp_avg_sq"))
    p.grad = grads_for(9, p.shape)
    expected = p.detach().clone()
    k = torch.full_like(expected, 5.0)
    sparse_adam_reference(expected, p.grad, m, v, k, LR, BETAS, EPS)
    opt.step()
    assert torch.equal(opt.state[p]["entry_steps"], k)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)


def test_trainer_steps_only_the_table_entries_samples_touched(tmp_path):
    """ngp with ``optim.sparse_tables``: its tables' group takes the sparse step, the MLPs' torch's.
    At every step the entries whose count went up (a sample touched them) move and the others
    keep their values; after five steps the entries no sample ever touched hold their initial
    values. (Over several steps a touched entry can land back on its initial value: that is why
    each step is checked on its own.)"""
    from conftest import make_config

    from radfield.data.synthetic import make_scene
    from radfield.training.trainer import Trainer

    scene = make_scene(tmp_path / "scene", n_train=4, n_val=1, n_test=1, size=16)
    config = make_config(scene, "ngp-small", {"ngp.optim.sparse_tables": True}, steps=5)
    trainer = Trainer(config, tmp_path / "run", device="cpu", progress=False, log_tensorboard=False)
    tables, mlps = trainer.optimizer.param_groups
    assert tables["sparse"] and not mlps["sparse"] and "tables" not in tables
    initial = [p.detach().clone() for p in tables["params"]]
    previous = [(p.detach().clone(), torch.zeros_like(p)) for p in tables["params"]]
    for _ in range(5):
        trainer.train_step()
        for i, p in enumerate(tables["params"]):
            before, k_before = previous[i]
            k = trainer.optimizer.state[p]["entry_steps"]
            stepped = k > k_before
            assert torch.equal(k[stepped], k_before[stepped] + 1) and torch.equal(k[~stepped], k_before[~stepped])
            assert (p.detach()[stepped] != before[stepped]).all()
            assert torch.equal(p.detach()[~stepped], before[~stepped])
            previous[i] = (p.detach().clone(), k.clone())
    touched = untouched = 0
    for p, before in zip(tables["params"], initial):
        k = trainer.optimizer.state[p]["entry_steps"]
        assert torch.equal(p.detach()[k == 0], before[k == 0])
        touched, untouched = touched + int((k > 0).sum()), untouched + int((k == 0).sum())
    assert touched > 0 and untouched > 0
