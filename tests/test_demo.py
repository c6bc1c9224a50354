"""The README's main job: marginal-likelihood training on the diabetes data works."""

from nngp_gpytorch.demo import run


def test_demo_learns_and_beats_constant_baseline():
    summary = run(depth=2, iterations=30, lr=0.05, verbose=False)
    losses = summary["losses"]
    assert losses[-1] < losses[0] - 0.02  # the negative marginal log likelihood per point decreases
    assert summary["rmse"] < 0.85 * summary["baseline_rmse"]
    assert summary["weight_var"] != 1.0 and summary["noise"] > 0
