"""The one-way architecture: ``inference`` is an engine that imports nothing from ``zoo``; a
model is one file, an estimator is one file. The proofs: a throw-away model and a throw-away
estimator, each written in this test file alone, are picked up by the conformance suite,
``inference.compare``, ``ppzoo list``, ``ppzoo compare --quick`` and ``ppzoo estimate``."""

import ast
import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

import inference
import zoo
from inference.estimators import ChecksFailed, Estimator, register as register_estimator, unregister
from inference.sampling import sampled
from zoo import conformance
from zoo.app.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_no_inference_module_imports_zoo():
    files = sorted((ROOT / "inference").rglob("*.py"))
    assert len(files) > 10
    bad = {str(f.relative_to(ROOT)): m for f in files for m in _imports(f)
           if m == "zoo" or m.startswith("zoo.")}
    assert not bad, f"inference/ must not import zoo: {bad}"


def test_models_do_not_import_the_application():
    models = [f for f in (ROOT / "zoo").glob("*.py") if f.name != "__main__.py"]
    bad = {str(f.relative_to(ROOT)): m for f in models for m in _imports(f)
           if m.startswith("zoo.app")}
    assert not bad, f"only the application knows both layers: {bad}"


def test_inference_runs_without_zoo_loaded():
    code = ("import sys, torch, pyro, pyro.distributions as dist, inference\n"
            "def model(x):\n"
            "    with pyro.plate('data', len(x)) as i:\n"
            "        z = pyro.sample('z', dist.Normal(0., 1.))\n"
            "        pyro.sample('x', dist.Normal(z, 1.), obs=x[i])\n"
            "def guide(x):\n"
            "    with pyro.plate('data', len(x)):\n"
            "        pyro.sample('z', dist.Normal(0., 1.))\n"
            "est = inference.estimate((model, guide), torch.zeros(3), 'exact')\n"
            "assert not [m for m in sys.modules if m == 'zoo' or m.startswith('zoo.')]\n"
            "print(est.log_evidence)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    # x_n ~ N(0, 2) marginally: 3 log N(0 | 0, 2)
    assert float(out.stdout) == pytest.approx(3 * -0.5 * math.log(2 * math.pi * 2), abs=1e-4)


def _engine_imports():
    """``{module: {module it imports}}`` inside ``inference/``, every import statement counted
    (module level, inside functions, under ``TYPE_CHECKING``). ``from P import x`` names the
    submodule ``P.x`` where there is one, else ``P`` itself; importing ``P.Q.m`` from outside
    package ``P.Q`` also runs ``P/Q/__init__.py``, so it counts as importing ``P.Q`` too (from
    inside, that ``__init__`` is already running)."""
    modules = {}
    for f in (ROOT / "inference").rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (f, is_package)

    def owner(name):  # the module a dotted name lives in
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for mod, (f, is_package) in modules.items():
        here = mod.split(".") if is_package else mod.split(".")[:-1]
        names = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names if a.name.split(".")[0] == "inference"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
                if base.split(".")[0] == "inference":
                    names |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                              for a in node.names}
        edges = set()
        for name in names:
            target = owner(name)
            edges.add(target)
            package = target.rpartition(".")[0]
            while package and not (mod + ".").startswith(package + "."):
                edges.add(package)
                package = package.rpartition(".")[0]
        graph[mod] = edges - {mod}
    return graph


def _cycles(graph):
    """The strongly connected components of ``graph`` with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while v not in component:
                component.add(stack.pop())
            on.difference_update(component)
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_engine_has_no_import_cycles():
    graph = _engine_imports()
    assert {"inference.problem", "inference.results", "inference.estimators.ais"} <= set(graph)
    assert "inference.estimators" in graph["inference.estimate"]  # the scan sees imports
    cycles = _cycles(graph)
    assert not cycles, ("modules inside inference/ import each other (base types belong in "
                        f"leaf modules): {cycles}")


def test_no_engine_module_imports_the_package_root():
    """``inference/__init__.py`` is the public facade; its names come from the modules below it,
    never the other way round (``from inference import FitResult`` inside the engine)."""
    bad = sorted(m for m, edges in _engine_imports().items() if "inference" in edges)
    assert not bad, f"import from the defining module, not the package root: {bad}"


def test_the_base_types_keep_their_public_import_paths():
    from inference import FitResult
    from inference.estimate import Estimate
    from inference.estimators import Estimator as E, NotApplicable, Problem, register as r
    from inference import problem, results

    assert (E, NotApplicable, Problem, r) == (problem.Estimator, problem.NotApplicable,
                                              problem.Problem, problem.register)
    assert (FitResult, Estimate) == (results.FitResult, results.Estimate)


# ------------------------------------------------------------------ a throw-away model
class ThrowAway(zoo.ZooModel):
    """z_n ~ N(0, 1), x_n ~ N(z_n, 0.5^2); guide q(z_n) = N(m_n, s_n^2)."""

    name = "throwaway"
    summary = "normal-normal toy written in a test file"
    default_data = "200 draws from the model"
    references = ("1-D quadrature",)
    job = zoo.Job(steps=200, lr=0.05, scope="local", methods=("exact", "elbo", "is-guide"),
                  why="a test's model", quick=dict(steps=100, num_samples=(1, 10), seeds=2))

    def model(self, x):
        with pyro.plate("data", len(x)) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])

    def guide(self, x):
        with pyro.plate("data", len(x)):
            loc = pyro.param("m", lambda: x.new_zeros(len(x)), event_dim=0)
            scale = pyro.param("s", lambda: x.new_ones(len(x)), constraint=constraints.positive,
                               event_dim=0)
            pyro.sample("z", dist.Normal(loc, scale))

    def check_data(self, *data):
        zoo.check_tensors(data)
        if len(data) != 1 or data[0].dim() != 1:
            raise ValueError("throwaway takes one 1-D tensor x [N]")

    def load_data(self, path=None, device="cpu"):
        return tuple(t.to(device) for t in self.simulate(200, seed=0).data)

    def simulate(self, num_data, seed=0):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(num_data, generator=g)
        return zoo.Simulated(data=(z + 0.5 * torch.randn(num_data, generator=g),), params={"z": z})

    def sample(self, num, seed=0, mean=False):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(num, generator=g)
        return (z if mean else z + 0.5 * torch.randn(num, generator=g),)

    def views(self, x):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.hist(x.numpy())
        ax.set(title="throwaway: data", xlabel="x", ylabel="count")
        return {"data": fig}


@pytest.fixture
def throwaway():
    zoo.register(ThrowAway)
    yield ThrowAway()
    zoo.unregister(ThrowAway.name)


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def test_a_model_in_one_file_passes_the_conformance_suite(throwaway):
    assert "throwaway" in zoo.names()
    assert set(conformance.check_model(throwaway)) == {c.__name__ for c in conformance.CHECKS}


def test_a_model_in_one_file_runs_in_ppzoo(throwaway, tmp_path):
    rc, stdout, _ = run_main(["list"])
    assert rc == 0 and "throwaway" in stdout and "normal-normal toy" in stdout
    out = tmp_path / "run"
    rc, stdout, stderr = run_main(["compare", "throwaway", "--quick", "--no-progress", "--out", out])
    assert rc == 0, stderr
    df = pd.read_csv(out / "results.csv")
    assert set(df["method"]) == {"exact", "elbo", "is-guide"} and set(df["model"]) == {"throwaway"}
    assert len(df) == 1 + 2 * 2 * 2  # exact once; two methods x two K x two seeds
    assert (out / "throwaway" / "data.png").is_file() and (out / "throwaway" / "state.pt").is_file()
    assert "## throwaway" in (out / "summary.md").read_text()
    # its free per-datapoint guide cannot score new rows: fitted on all, nothing held out, said so
    assert "Held out: nothing -- throwaway's guide keeps parameters per datapoint (m, s)" in \
        (out / "summary.md").read_text()
    # the exact row is the conjugate evidence: x_n ~ N(0, 1.25)
    (x,) = throwaway.load_data()
    truth = float(dist.Normal(0.0, 1.25**0.5).log_prob(x.double()).sum())
    assert df.loc[df["method"] == "exact", "estimate"].item() == pytest.approx(truth, abs=1e-3)


def test_a_reference_failing_its_own_checks_is_an_error_not_a_skip(throwaway, tmp_path):
    """compare skips a method only where it raises NotApplicable: a quadrature reference on a
    grid too coarse for its own check (4 points against 2) raises, in the engine and in
    ``ppzoo compare`` (one line naming the fix, not "skipped", not an internal error)."""
    data = throwaway.load_data()
    inference.fit(throwaway, data, steps=50, lr=0.05, progress=False)
    with pytest.raises(ChecksFailed, match="failed its own checks.*raise quadrature_points"):
        inference.compare(throwaway, data, methods=["exact", "is-guide"], num_samples=[10],
                          seeds=[0], quadrature_points=4)
    df = inference.compare(throwaway, data, methods=["exact", "is-guide"], num_samples=[10],
                           seeds=[0], scope="global")  # no closed form in global scope: skipped
    assert "exact" in df.attrs["skipped"] and set(df["method"]) == {"is-guide"}

    zoo.unregister(ThrowAway.name)
    zoo.register(type("ThrowAwayCoarse", (ThrowAway,), {"job": zoo.Job(
        steps=50, lr=0.05, scope="local", methods=("exact", "is-guide"),
        estimate_options={"quadrature_points": 4}, quick=dict(num_samples=(10,), seeds=1))}))
    out = tmp_path / "run"
    rc, _, stderr = run_main(["compare", "throwaway", "--quick", "--no-progress", "--out", out])
    assert rc == 1 and stderr.startswith("ppzoo: error: the quadrature reference for throwaway "
                                         "failed its own checks"), stderr
    written = out / "throwaway" / "skipped.json"
    assert not written.exists() or "exact" not in json.loads(written.read_text())


# -------------------------------------------------------------- a throw-away estimator
class GuideTwice(Estimator):
    """Importance sampling with the guide, written as a user would add a method."""

    name = "is-guide-copy"
    summary = "is-guide again, registered from a test file"

    def run(self, problem, **options):
        return sampled(problem, "guide", "log_mean")


@pytest.fixture
def guide_twice():
    register_estimator(GuideTwice)
    yield GuideTwice.name
    unregister(GuideTwice.name)


def test_an_estimator_in_one_file_runs_everywhere(guide_twice, throwaway, tmp_path):
    assert guide_twice in inference.methods()
    data = throwaway.load_data()
    inference.fit(throwaway, data, steps=100, lr=0.05, progress=False)
    ours = inference.estimate(throwaway, data, guide_twice, 50, seed=3)
    iwae = inference.estimate(throwaway, data, "is-guide", 50, seed=3)
    assert torch.equal(ours.per_datapoint, iwae.per_datapoint)
    df = inference.compare(throwaway, data, num_samples=[10], seeds=[0])
    assert guide_twice in set(df["method"]) and df["error"].notna().all()

    rc, _, stderr = run_main(["fit", "throwaway", "--steps", "50", "--out", tmp_path / "fit"])
    assert rc == 0, stderr
    rc, stdout, stderr = run_main(["estimate", tmp_path / "fit", "--method", guide_twice,
                                   "-K", "10", "--seeds", "1"])
    assert rc == 0 and guide_twice in stdout, stderr
    rc, _, stderr = run_main(["estimate", tmp_path / "fit", "--method", "nope"])
    assert rc == 2 and guide_twice in stderr  # the error lists the registered methods

    # the compare job runs every registered method unless a model names its own
    zoo.unregister(ThrowAway.name)
    zoo.register(type("ThrowAwayAll", (ThrowAway,), {"job": zoo.Job(
        steps=100, lr=0.05, scope="local", quick=dict(num_samples=(10,), seeds=1))}))
    out = tmp_path / "run"
    rc, _, stderr = run_main(["compare", "throwaway", "--quick", "--no-progress", "--out", out])
    assert rc == 0, stderr
    skipped = json.loads((out / "throwaway" / "skipped.json").read_text())
    assert set(skipped) <= {"bdmc", "smc"}  # no simulating latents; global evidence only
    assert set(pd.read_csv(out / "results.csv")["method"]) == set(inference.methods()) - set(skipped)
