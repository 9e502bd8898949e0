"""Execute every coursework notebook in ``notebooks/`` in small mode (``PPZOO_SMALL=1``).

A notebook fails its test if a cell raises, if a cell writes a warning to stderr, or if it
imports something the coursework does not allow. The kernel is this interpreter
(``sys.executable``): its kernel spec, under a name no other spec has, is written to a
temporary directory put on ``JUPYTER_PATH``, so the test needs no registered kernel and cannot
pick up another Python.

The notebooks are stored without outputs or execution counts; the last test checks that.
"""

import ast
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "ppzoo-test"
#: top-level modules a notebook may import (besides the project's own)
ALLOWED = {"zoo", "inference", "torch", "numpy", "matplotlib", "pandas", "pyro", "os", "math", "time"}
#: seconds one cell may run in small mode
CELL_TIMEOUT = 300


#: warnings that are not the notebooks' fault: arviz announces its refactor at import (once per
#: home directory; pyproject's filterwarnings ignores it in the test process). (pyro imports
#: tqdm.auto, which warns in a notebook without ipywidgets: the dev extra installs it.)
KNOWN_STDERR = ("ArviZ is undergoing a major refactor",)


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory):
    """A Jupyter data directory holding one kernel spec: ``sys.executable -m ipykernel_launcher``."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher",
                 "-f", "{connection_file}"],
        "display_name": "ppzoo test kernel",
        "language": "python",
    }))
    return root


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_mle_map_l2.ipynb", "02_gaussian_mixtures.ipynb", "03_amortization.ipynb",
            "04_estimating_log_px.ipynb", "05_vae_latent_space.ipynb",
            "06_bring_your_own_model.ipynb", "07_autoregressive_vs_latent.ipynb",
            "08_choosing_an_estimator.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_imports_only_allowed_modules(path):
    nb = nbformat.read(path, as_version=4)
    for cell in _code(nb):
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] in ALLOWED, f"{path.name} imports {mod}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path, jupyter_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("PPZOO_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny tensors: one thread is fastest on 2 cores
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(path, as_version=4)
    # a last cell reporting the kernel's interpreter
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError on the first failing cell; shuts the kernel down

    warnings = []
    for i, cell in enumerate(_code(nb)):
        for out in cell.get("outputs", []):
            if out.get("name") != "stderr":
                continue
            lines = out.get("text", "").splitlines()
            for j, line in enumerate(lines):
                message = "\n".join(lines[j : j + 4])  # a warning's text may follow its header line
                if "Warning" in line and not any(k in message for k in KNOWN_STDERR):
                    warnings.append(f"code cell {i}: {message}\n")
    assert not warnings, "".join(warnings)
    last = nb.cells[-1].outputs
    assert last and last[0]["text"].strip() == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in _code(nb):
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
            f"{path.name}: clear the outputs before committing (e.g. jupyter nbconvert --clear-output)"
