"""What the docs say agrees with the code: every list of models or methods written out (the
``--help`` texts, docstrings, the README and docs/architecture.md) names exactly the registered
ones (``zoo.names()``, ``inference.methods()``), and figures of time (measurements go stale)
live only in ``benchmarks/RESULTS.md`` and the README, never in a docstring or comment."""

import ast
import doctest
import importlib
import io
import re
import tokenize
from pathlib import Path

import inference
import zoo
from clitools import run_main
from zoo.app import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def _squeezed(text):
    return re.sub(r"\s", "", text)  # argparse wraps help at spaces and hyphens


def test_help_lists_every_registered_model_and_method():
    assert cli.MODEL_NAMES == ", ".join(zoo.names())
    assert cli.METHOD_NAMES == ", ".join(inference.methods())
    for command, lists in (("fit", [zoo.names()]), ("estimate", [inference.methods()]),
                           ("compare", [zoo.names(), inference.methods()])):
        rc, stdout, _ = run_main([command, "--help"])
        assert rc == 0
        for names in lists:
            assert _squeezed(", ".join(names)) in _squeezed(stdout), (command, names)


def test_list_methods_prints_every_method_with_its_summary():
    from inference import estimators

    rc, stdout, _ = run_main(["list", "--methods"])
    assert rc == 0
    assert [ln for ln in stdout.splitlines() if not ln.startswith(" ")] == list(inference.methods())
    for name in inference.methods():
        assert " ".join(estimators.get(name).summary.split()) in " ".join(stdout.split())


def test_zoo_docstring_example_runs_and_names_every_model():
    module = importlib.import_module("zoo")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0


def test_readme_names_every_model_and_method_and_only_those():
    api = re.search(r"zoo\.names\(\)\s+#\s*(\(.*?\))", README)
    assert api and ast.literal_eval(api.group(1)) == zoo.names()
    models_table = README.split("| model | generative story |")[1].split("\n\n")[0]
    first = [row.split("|")[1] for row in models_table.splitlines()[2:]]
    assert sorted(n for cell in first for n in re.findall(r"`(\w+)`", cell)) == sorted(zoo.names())
    methods_table = README.split("### Estimators")[1].split("| method | estimate of log p(x)")[1]
    rows = methods_table.split("\n\n")[0].splitlines()[2:]
    assert [re.search(r"`([\w-]+)`", r.split("|")[1]).group(1) for r in rows] == \
        list(inference.methods())


def test_layout_and_architecture_name_every_model_and_estimator_file():
    estimators = sorted(p.name for p in (ROOT / "inference" / "estimators").glob("*.py")
                        if p.name != "__init__.py")
    models = [f"{m}.py" for m in zoo.MODELS]
    layout = README.split("## Layout")[1]
    for name in estimators + models:
        assert f"`{name}`" in layout, name
    for name in models:
        assert name.replace(".py", "") in ARCHITECTURE, name


def test_estimate_docstring_names_every_method():
    text = importlib.import_module("inference.estimate").__doc__
    for name in inference.methods():
        assert f"``{name}``" in text, name
    assert inference.METHODS == inference.methods()


#: a figure of time: a number and a unit (not "2 s^2", "K=10" or "s_1")
TIME = re.compile(r"(?<![\w.])\d+(\.\d+)?\s*(ms|us|µs|s|sec|seconds?|min|minutes?|hours?)"
                  r"(?![\w^])")
#: stated settings, not measurements: a timeout and the default it replaces
ALLOWED = ("PPZOO_DIST_TIMEOUT", "30 minutes")


def _prose(path):
    """The comments and docstrings of a Python file, with their line numbers."""
    text = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                first = node.body[0].lineno
                for i, line in enumerate(doc.splitlines()):
                    yield first + i, line


def test_no_timings_in_docstrings_or_comments():
    files = [p for d in ("inference", "zoo") for p in sorted((ROOT / d).rglob("*.py"))]
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files
             for n, line in _prose(p) if TIME.search(line) and not any(a in line for a in ALLOWED)]
    ci = [f".ci/run:{n}: {line.strip()}" for n, line in
          enumerate((ROOT / ".ci" / "run").read_text().splitlines(), 1)
          if line.lstrip().startswith("#") and TIME.search(line)]
    assert not found + ci, "timings belong in benchmarks/RESULTS.md or the README:\n" + \
        "\n".join(found + ci)
