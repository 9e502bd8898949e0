"""Saved state (inference.state): loads with weights_only=True, never runs pickled code, and
loads only into the model, guide, data and fit it belongs to."""

import itertools

import pyro
import pytest
import torch

import inference
import zoo
from clitools import Payload
from inference.state import StateError
from toy import local_data, local_guide, local_model

LOCAL = (local_model, local_guide)

#: every (model, guide) the zoo has, built small
PAIRS = {
    "gmm/meanfield": ("gmm", {"guide": "meanfield"}),
    "gmm/map": ("gmm", {"guide": "map"}),
    "map_l2/map": ("map_l2", {"guide": "map"}),
    "map_l2/gaussian": ("map_l2", {"guide": "gaussian"}),
    "map_l2/meanfield": ("map_l2", {"guide": "meanfield"}),
    "dlvm": ("dlvm", {"hidden": [4]}),
    "vae": ("vae", {"hidden": [4]}),
}


def _entry(key):
    name, options = PAIRS[key]
    entry = zoo.get(name, **options)
    return entry, tuple(t[:20] for t in entry.load_data())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("states")
    for key in PAIRS:
        entry, data = _entry(key)
        inference.fit(entry, data, steps=3, progress=False).save(root / key.replace("/", "-"))
    pyro.clear_param_store()
    return root


def plant(path, marker):
    torch.save({"format": "ppzoo-state", "state": Payload(marker)}, path)


def test_planted_pickle_is_refused_by_load_fit_and_fit_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "run").mkdir()
    plant(tmp_path / "run" / "state.pt", marker)
    with pytest.raises(StateError, match="not a readable ppzoo fitted state") as e:
        inference.load_fit(LOCAL, tmp_path / "run")
    assert "\n" not in str(e.value)
    plant(tmp_path / "ckpt.pt", marker)
    with pytest.raises(StateError, match="not a readable ppzoo checkpoint"):
        inference.fit(LOCAL, local_data(10), steps=5, progress=False,
                      checkpoint=tmp_path / "ckpt.pt")
    assert not marker.exists()  # the payload never ran
    torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert marker.exists()  # ... though it would have, loaded the old way


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04junk"])
def test_corrupt_or_foreign_files_are_refused(tmp_path, content):
    (tmp_path / "state.pt").write_bytes(content)
    with pytest.raises(StateError, match="not a readable ppzoo fitted state"):
        inference.load_fit(LOCAL, tmp_path)
    torch.save({"params": {"loc": torch.zeros(3)}}, tmp_path / "state.pt")  # no format marker
    with pytest.raises(StateError, match="is not ppzoo fitted state"):
        inference.load_fit(LOCAL, tmp_path)


def test_state_is_plain_and_round_trips_exactly(fitted):
    for key in PAIRS:
        folder = fitted / key.replace("/", "-")
        saved = torch.load(folder / "state.pt", weights_only=True)
        entry, data = _entry(key)
        inference.load_fit(entry, folder, data=data)
        store = pyro.get_param_store().get_state()
        for k, v in saved["params"].items():
            assert torch.equal(store["params"][k].detach(), v), (key, k)
        for name, net in entry.networks().items():
            for k, v in net.state_dict().items():
                assert torch.equal(v, saved["networks"][name][k]), (key, name, k)


@pytest.mark.parametrize("source,target", [(a, b) for a, b in itertools.permutations(PAIRS, 2)])
def test_state_of_another_model_or_guide_is_refused(fitted, source, target):
    entry, data = _entry(target)
    with pytest.raises(StateError, match=r"was fitted for (model|model options|guide)") as e:
        inference.load_fit(entry, fitted / source.replace("/", "-"), data=data)
    assert "\n" not in str(e.value)


def test_state_of_other_data_or_shapes_is_refused(fitted, tmp_path):
    entry, data = _entry("gmm/meanfield")
    other = (data[0] + 1,)
    with pytest.raises(StateError, match="fitted on other data"):
        inference.load_fit(entry, fitted / "gmm-meanfield", data=other)
    # same options, another network shape: refused before any weight is copied
    vae = zoo.get("vae", hidden=[5])
    with pytest.raises(StateError, match="was fitted for model options"):
        inference.load_fit(vae, fitted / "vae")
    # a user's pair: the guide function is recorded
    inference.fit(LOCAL, local_data(10), steps=2, progress=False).save(tmp_path / "toy")
    with pytest.raises(StateError, match="was fitted for guide"):
        inference.load_fit((local_model, lambda x: local_guide(x)), tmp_path / "toy")


def test_checkpoint_of_another_fit_is_refused(tmp_path):
    x = local_data(20)
    ckpt = tmp_path / "ckpt.pt"
    inference.fit(LOCAL, x, steps=4, lr=0.05, seed=1, progress=False, checkpoint=ckpt,
                  checkpoint_every=2)
    for change, message in [(dict(seed=2), "seed was 1, now 2"),
                            (dict(steps=8), "steps was 4, now 8"),
                            (dict(lr=0.1), "lr was 0.05, now 0.1")]:
        kwargs = {**dict(steps=4, lr=0.05, seed=1, progress=False, checkpoint=ckpt), **change}
        with pytest.raises(StateError, match=message):
            inference.fit(LOCAL, x, **kwargs)
    with pytest.raises(StateError, match="fitted on other data"):
        inference.fit(LOCAL, x + 1, steps=4, lr=0.05, seed=1, progress=False, checkpoint=ckpt)


def _regression(X, y):
    w = pyro.sample("w", pyro.distributions.Normal(torch.zeros(X.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", pyro.distributions.Normal((X * w).sum(-1), 0.5), obs=y)


@pytest.mark.parametrize("family", ["AutoMultivariateNormal", "AutoDiagonalNormal", "AutoNormal"])
def test_saved_state_loads_into_a_fresh_autoguide_already_traced(family, tmp_path):
    """A new process builds a new autoguide and traces it (every check does) before loading the
    fitted state: its own nn.Parameters (AutoMultivariateNormal's loc) must take the loaded
    values, not keep their initial ones (a silently wrong estimate, hundreds of nats off)."""
    from pyro.infer import autoguide

    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g)
    y = (X * torch.tensor([1.0, -2.0, 0.5])).sum(-1) + 0.5 * torch.randn(40, generator=g)
    fit = inference.fit((_regression, getattr(autoguide, family)(_regression)), (X, y),
                        steps=300, lr=0.05)
    fit.save(tmp_path)
    want = inference.estimate(fit, (X, y), "is-guide", 200).log_evidence
    fresh = (_regression, getattr(autoguide, family)(_regression))
    inference.load_fit(fresh, tmp_path, data=(X, y))  # traces the fresh guide, then loads
    assert inference.estimate(fresh, (X, y), "is-guide", 200).log_evidence == pytest.approx(want)
    torch.testing.assert_close(fresh[1].median(X, y)["w"], fit.target.guide.median(X, y)["w"])
