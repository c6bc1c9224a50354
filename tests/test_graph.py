"""Graph convolution kernels on Zachary's karate club (networkx): statistical verification against finite
GCNs, the transductive GPyTorch semantics (inputs are node ids; sub-blocks are blocks of one kernel), the
NTK against an independently written Jacobian, and input errors."""

from __future__ import annotations

import math

import gpytorch
import networkx as nx
import pytest
import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from verification.statistics import mean_test
from verification.verify import verify

torch.set_num_threads(1)
ALPHA = 1e-4
W, B = 1.7, 0.2


def karate(d: int = 6, seed: int = 0):
    """Karate club adjacency ``(34, 34)`` and node features ``(34, d)``: a one-hot community part, degree and
    noise. Rows are relabelled into lexicographic order of the features, so that an ensemble sampler that
    deduplicates inputs by sorting them (torch.unique) keeps the node order."""
    g = nx.karate_club_graph()
    adj = torch.tensor(nx.to_numpy_array(g), dtype=torch.float64)
    club = torch.tensor([g.nodes[i]["club"] == "Officer" for i in range(34)], dtype=torch.float64)
    deg = adj.sum(-1)
    noise = torch.randn(34, d - 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = torch.cat([club[:, None], (deg / deg.max())[:, None], 0.5 * noise], dim=-1)
    order = sorted(range(34), key=lambda i: tuple(x[i].tolist()))
    return adj[order][:, order], x[order], club[order]


@pytest.mark.parametrize("normalize", ["sym", "row"])
def test_gcn_matches_finite_networks_on_karate_club(normalize):
    adj, x, _ = karate()
    net = A.Serial(A.GraphConv(adj, normalize=normalize), A.ReLU(), A.GraphConv(adj, normalize=normalize), A.Erf(),
                   A.Dense())
    r = verify(net, x, networks=256, width=1024, seed=1, weight_var=W, bias_var=B, alpha=ALPHA)
    assert r.passed, r.summary()


def test_gcn_mutant_without_self_loops_is_rejected():
    adj, x, _ = karate()
    net = A.Serial(A.GraphConv(adj), A.ReLU(), A.GraphConv(adj), A.Erf(), A.Dense())
    wrong = A.Serial(A.GraphConv(adj, self_loops=False), A.ReLU(), A.GraphConv(adj), A.Erf(), A.Dense())
    hyper = Hyperparameters.constant(W, B)
    r = verify(net, x, networks=256, width=1024, seed=1, weight_var=hyper, alpha=ALPHA,
               analytic=evaluate(wrong, x, x, hyper)[0])
    assert not r.passed


def empirical_gcn_ntk(adj_hat, x, networks, width, seed):
    """Θ̂ = J Jᵀ of a 2-layer GCN ``f = Â φ(Â X ω0 σw/√d + σb β0) ω1 σw/√n + σb β1`` by its explicit
    Jacobian (nodes interact, so the per-input δ-trick does not apply). Returns ``(M, N, N)``."""
    g = torch.Generator().manual_seed(seed)
    m, d = networks, x.shape[1]
    ax = adj_hat @ x  # (N, d)
    w0 = torch.randn(m, d, width, generator=g, dtype=torch.float64)
    b0 = torch.randn(m, 1, width, generator=g, dtype=torch.float64)
    w1 = torch.randn(m, width, generator=g, dtype=torch.float64)
    s0, s1 = math.sqrt(W / d), math.sqrt(W / width)
    z = ax @ w0 * s0 + math.sqrt(B) * b0  # (M, N, n)
    a = torch.relu(z)
    da = (z > 0).to(z.dtype) * w1[:, None, :]  # ∂φ(z_ju)/∂z · ω1_u, (M, N, n)
    aa = adj_hat @ a  # (M, N, n)
    theta = s1 ** 2 * aa @ aa.transpose(-1, -2) + B  # readout weights and bias
    # first-layer bias: G_iu = Σ_j Â_ij φ'(z_ju) ω1_u
    gb = adj_hat @ da
    theta = theta + B * s1 ** 2 * gb @ gb.transpose(-1, -2)
    # first-layer weights: Θ_ik = s0² s1² Σ_{j,l} Â_ij Â_kl (ÂX_j·ÂX_l) (Σ_u da_ju da_lu)
    inner = (ax @ ax.T)[None] * (da @ da.transpose(-1, -2))  # (M, N, N) over (j, l)
    theta = theta + s0 ** 2 * s1 ** 2 * adj_hat @ inner @ adj_hat.T
    return theta


def test_gcn_ntk_matches_explicit_jacobian():
    adj, x, _ = karate()
    layer = A.GraphConv(adj)
    net = A.Serial(layer, A.ReLU(), A.GraphConv(adj))
    _, theta = evaluate(net, x, x, Hyperparameters.constant(W, B), with_ntk=True)
    samples = empirical_gcn_ntk(layer.adjacency, x, networks=64, width=512, seed=3)
    r = mean_test(samples, theta, alpha=ALPHA, width=512)
    assert r.passed, r.summary()
    wrong = theta + 0.03 * theta.diagonal().mean()  # power: a 3% shift of the bias term
    assert not mean_test(samples, wrong, alpha=ALPHA, width=512).passed


def test_graph_kernel_is_transductive_and_sub_blocks_agree():
    adj, x, club = karate()
    kernel = NNGPKernel(A.gcn(adj, depth=1), node_features=x, weight_var=W, bias_var=B).double()
    ids = torch.arange(34, dtype=torch.float64)[:, None]
    full = kernel(ids).to_dense()
    expected, _ = evaluate(kernel.architecture, x, x, Hyperparameters.constant(W, B))
    torch.testing.assert_close(full, expected)
    train, test = ids[::3], ids[1::3]
    torch.testing.assert_close(kernel(test, train).to_dense(), full[1::3][:, ::3])
    torch.testing.assert_close(kernel(test, diag=True), full.diagonal()[1::3])
    lazy = kernel(ids)
    torch.testing.assert_close(lazy[3:7, 10:20].to_dense(), full[3:7, 10:20])
    batched = NNGPKernel(A.gcn(adj), node_features=x, batch_shape=torch.Size([2])).double()
    assert batched(train, test).to_dense().shape == (2, 12, 11)
    k, t = NTKKernel(A.gcn(adj), node_features=x).double().nngp_and_ntk(train, test)
    assert k.shape == t.shape == (12, 11)


def test_gp_on_karate_club_predicts_communities():
    """A GP classifier-by-regression on 1/3 of the nodes predicts the others' club (features without the
    club column: only the graph and the degree carry the signal)."""
    adj, x, club = karate()
    feats = x[:, 1:]
    kernel = NNGPKernel(A.gcn(adj, depth=1), node_features=feats, weight_var=W, bias_var=B).double()
    ids = torch.arange(34, dtype=torch.float64)[:, None]
    train, test = ids[::3], ids[[i for i in range(34) if i % 3]]
    y = 2 * club - 1
    lik = gpytorch.likelihoods.GaussianLikelihood().double()
    lik.noise = 0.1

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(train, y[::3], lik)
            self.covar_module = kernel

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(torch.zeros(z.shape[0], dtype=z.dtype),
                                                             self.covar_module(z))

    model = GP().double().eval()
    with torch.no_grad():
        mean = model(test).mean
    accuracy = ((mean > 0) == (y[test[:, 0].long()] > 0)).double().mean().item()
    assert accuracy >= 0.8, accuracy


def test_graph_errors():
    adj, x, _ = karate()
    with pytest.raises(A.ArchitectureError, match="square"):
        A.GraphConv(adj[:, :30])
    with pytest.raises(ValueError, match="34 nodes but node_features has 30 rows"):
        NNGPKernel(A.gcn(adj), node_features=x[:30])
    kernel = NNGPKernel(A.gcn(adj), node_features=x).double()
    with pytest.raises(ValueError, match="integer node ids"):
        kernel(torch.tensor([[0.5], [1.0]], dtype=torch.float64)).to_dense()
    with pytest.raises(ValueError, match="integer node ids"):
        kernel(torch.tensor([[34.0]], dtype=torch.float64)).to_dense()
    with pytest.raises(ValueError, match="node indices of shape"):
        kernel(x).to_dense()
    with pytest.raises(ValueError, match="transductive"):
        evaluate(A.Serial(A.GraphConv(adj), A.ReLU(), A.Dense()), x[:10], x[:10], Hyperparameters.constant())


def test_node_order_is_kept_by_the_ensemble():
    """Regression (found by the hypothesis grammar): the ensemble ran unique inputs, which torch.unique sorts, so
    the twin saw the nodes of a graph permuted and only feature-sorted graphs (like the karate fixture) passed.
    Nodes in arbitrary order, two of them with equal features, now pass; the permuted kernel is rejected."""
    n = 5
    upper = (torch.rand(n, n, generator=torch.Generator().manual_seed(1)) < 0.5).double().triu(1)
    adj = upper + upper.T
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[3] = x[1]  # equal features, different neighbourhoods
    net = A.Serial(A.GraphConv(adj), A.ReLU(), A.GraphConv(adj), A.Dense())
    r = verify(net, x, networks=256, width=512, seed=1, weight_var=W, bias_var=B, alpha=ALPHA)
    assert r.passed, r.summary()
    order = torch.argsort(x[:, 0])
    k = evaluate(net, x, x, Hyperparameters.constant(W, B))[0]
    permuted = k[order][:, order]
    r = verify(net, x, networks=256, width=512, seed=1, weight_var=W, bias_var=B, alpha=ALPHA, analytic=permuted)
    assert not r.passed
