"""The package's layout rules (issue 30): no import circles, no import of a layer above, small files.

The import graph is read from the source (``ast``), function-level imports included: a circle
closed by an import inside a function is still a circle.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cellformer as cf

SRC = Path(cf.__file__).parent

#: Subpackages (and top-level modules) from the bottom up: each may import its own subpackage
#: and the layers below it, never one above or beside it.
LAYERS = [
    {"_errors", "_version"},
    {"_utils", "_docs", "_settings"},
    {"_core"},
    {"pp", "datasets"},
    {"nn"},
    {"tokenizers"},
    {"module", "train"},
    {"model"},
    {"tl", "bench"},
    {"pl"},
    {"__init__", "_cli_files"},
    {"_cli_commands"},
    {"cli"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_LINES = 500
MAX_CONSTRUCTOR_PARAMETERS = 15


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (SRC / rel).with_suffix(".py").exists() or (SRC / rel / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of cellformer it imports}``, function-level imports included."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("cellformer")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("cellformer"):
                    continue
                submodules = {f"{target}.{a.name}" for a in node.names}
                submodules = {m for m in submodules if is_module(m)}
                targets |= submodules or {target}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of modules (Tarjan), if any."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_import_graph_has_no_circles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_a_layer_above_it():
    graph = import_graph()
    assert set(map(layer_of, graph)) <= set(LEVEL), "a new subpackage needs a place in LAYERS"
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if layer_of(source) != layer_of(target)
        and LEVEL[layer_of(target)] >= LEVEL[layer_of(source)]
    )
    assert upward == []


def test_no_source_file_is_over_500_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize("package", [cf.model, cf.module])
def test_no_public_constructor_takes_over_15_parameters(package):
    counts = {}
    for name in package.__all__:
        obj = getattr(package, name)
        if inspect.isclass(obj):
            parameters = inspect.signature(obj.__init__).parameters.values()
            named = [
                p
                for p in parameters
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            counts[name] = len(named)
    assert counts, "no public classes found"
    assert {k: v for k, v in counts.items() if v > MAX_CONSTRUCTOR_PARAMETERS} == {}


def test_public_names_are_imported_from_their_public_place():
    """Code outside a subpackage imports its public names from it, not from its private files."""
    import importlib

    found = []
    for path in SRC.rglob("*.py"):
        source = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            parts = node.module.split(".")
            if parts[0] != "cellformer" or len(parts) < 3 or not parts[2].startswith("_"):
                continue
            package = ".".join(parts[:2])
            if source == package or source.startswith(package + "."):
                continue  # inside the subpackage: its private files are its own
            public = set(getattr(importlib.import_module(package), "__all__", ()))
            found += [
                f"{source}: {a.name} from {node.module}" for a in node.names if a.name in public
            ]
    assert found == []


def code_lines(function) -> int:
    """Lines of a function's source below its signature and docstring."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    node = tree.body[0]
    body = (
        node.body[1:]
        if isinstance(node.body[0], ast.Expr)
        and isinstance(getattr(node.body[0], "value", None), ast.Constant)
        else node.body
    )
    return body[-1].end_lineno - body[0].lineno + 1


#: Most lines of code (below signature and docstring) of the two functions users call most
#: (issue 40): each reads as a short pipeline of named steps.
MAX_PIPELINE_LINES = {"predict": 80, "annotate": 120}
#: Most classes in a model's method resolution order, object included (scvi-tools' SCANVI: 8).
MAX_MRO = 8


def test_predict_and_annotate_read_as_short_pipelines():
    from cellformer.model import CellformerModel

    lines = {
        "predict": code_lines(CellformerModel.predict),
        "annotate": code_lines(cf.tl.annotate),
    }
    assert all(n > 10 for n in lines.values()), lines  # the counter reads bodies, not stubs
    assert {k: n for k, n in lines.items() if n > MAX_PIPELINE_LINES[k]} == {}


def test_code_lines_counts_the_body_below_the_docstring():
    def f(a):
        """Doc.

        More doc.
        """
        b = a + 1
        return b

    assert code_lines(f) == 2


def test_every_model_has_a_short_method_resolution_order():
    from cellformer.model.base._registry import _MODEL_CLASSES

    lengths = {name: len(cls.__mro__) for name, cls in _MODEL_CLASSES.items()}
    assert {"LinearClassifier", "CellTransformer", "ScGPTClassifier"} <= set(lengths)
    assert {k: n for k, n in lengths.items() if n > MAX_MRO} == {}


@pytest.mark.skipif(
    np.lib.NumpyVersion(np.__version__) < "2.0.0",
    reason="the fixtures were saved with numpy 2, whose pickles numpy 1 cannot read",
)
@pytest.mark.parametrize(
    ("kind", "cells"), [("LinearClassifier", slice(None)), ("CellTransformer", slice(0, 200))]
)
def test_models_saved_before_the_reorganisation_load_and_predict_the_same(kind, cells, tmp_path):
    """Models saved at commit c843076 (before model/base/ and EncoderConfig) load unchanged.

    The linear model on all 700 cells of pbmc68k_reduced × its first 60 genes, the transformer
    (d_model 16, one block, two heads, one epoch) on the first 200 of them.
    The linear model's model.pt holds only arrays and containers: it loads through
    torch.load(weights_only=True). The transformer's also holds pandas tables (its training
    history), which only a pickle can rebuild: without trust=True it is refused with the reason,
    with it it loads; saved again, it is in the safe format and loads without trust.
    """
    folder = Path(__file__).parent / "data" / "saved_c843076"
    name = {"LinearClassifier": "linear", "CellTransformer": "transformer"}[kind]
    adata = cf.datasets.pbmc68k_reduced()[cells, :60].copy()
    cls = getattr(cf.model, kind)
    if kind == "CellTransformer":
        with pytest.raises(cf.UnsafeFileError, match="pandas.*trust=True"):
            cls.load(folder / name, adata=adata)
    model = cls.load(folder / name, adata=adata, trust=kind == "CellTransformer")
    probs = model.predict(adata, soft=True, key_prefix=None).to_numpy()
    np.testing.assert_allclose(probs, np.load(folder / f"{name}_probs.npy"), atol=1e-5)
    copy = tmp_path / "resaved"
    model.save(copy)
    assert not (copy / "model.pt").exists() and (copy / "model.safetensors").exists()
    again = cls.load(copy).predict(adata, soft=True, key_prefix=None).to_numpy()
    np.testing.assert_allclose(again, probs, atol=1e-6)


@pytest.mark.parametrize("kind", ["LinearClassifier", "CellTransformer"])
def test_models_saved_before_prediction_became_a_pipeline_predict_the_same(kind):
    """Models saved at commit d3c2285 (issue 40) write what they wrote then, column by column.

    ``tests/data/saved_d3c2285/make.py`` trained and saved them, and kept every ``obs`` column,
    the latent and the probabilities with their Monte-Carlo std of a ``predict`` with Unknown
    rejection, majority voting, Monte-Carlo samples and the latent in one pass.
    """
    import importlib.util

    folder = Path(__file__).parent / "data" / "saved_d3c2285"
    spec = importlib.util.spec_from_file_location("make_saved_d3c2285", folder / "make.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    name = {"LinearClassifier": "linear", "CellTransformer": "transformer"}[kind]
    expected = dict(np.load(folder / "outputs.npz", allow_pickle=False))
    expected = {k: v for k, v in expected.items() if k.startswith(f"{name}:")}
    got = make.outputs(getattr(cf.model, kind).load(folder / name), make.query(), name)
    assert set(expected) <= set(got)  # (columns added since may be there too)
    assert (expected[f"{name}:obs:{name}_unknown"] == "True").any()  # the fixture rejects some
    for key, value in expected.items():
        if value.dtype.kind == "U":
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=key)


def test_old_pp_names_still_import_with_a_warning_that_names_the_replacement():
    with pytest.warns(FutureWarning, match=r"cellformer.pp.InputError .*use cellformer.InputError"):
        assert cf.pp.InputError is cf.InputError
    with pytest.warns(FutureWarning, match="get_matrix is no longer public API: it is internal"):
        from cellformer.pp import get_matrix
    from cellformer._core import get_matrix as internal

    assert get_matrix is internal
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        cf.pp.no_such_name  # noqa: B018
    with pytest.warns(FutureWarning, match="cellformer.nn.slice_linear .*internal"):
        from cellformer.nn import slice_linear
    from cellformer.nn._prune import slice_linear as internal_slice

    assert slice_linear is internal_slice and "slice_linear" not in cf.nn.__all__


def test_no_source_file_uses_a_name_pp_no_longer_exports():
    """cellformer itself reads its internal layer directly (its users would see warnings)."""
    moved = set(cf.pp._MOVED)
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "pp"
                and node.attr in moved
            ):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} pp.{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").endswith("pp"):
                found += [
                    f"{path.relative_to(SRC)}: {a.name}" for a in node.names if a.name in moved
                ]
    assert found == []


#: Imports of another subpackage's private module that remain (issue 40's target: at most 3),
#: each marked on its line with a comment that says why.
MAX_PRIVATE_IMPORTS = 6
#: Public names (``__all__`` of every public module, the top-level errors and settings);
#: issue 40's target: at most 120.
MAX_PUBLIC_NAMES = 144


def private_imports() -> list[str]:
    """``source:line -> target`` for each import of another subpackage's private module."""
    found = []
    for path in SRC.rglob("*.py"):
        source = module_name(path)
        package = source if path.name == "__init__.py" else source.rsplit(".", 1)[0]
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            parts = target.split(".")
            if parts[0] != "cellformer" or len(parts) < 2 or parts[1].startswith("_"):
                continue  # the top-level private modules (_core, _utils ...) are the internal layer
            if parts[1] == layer_of(source):
                continue  # its own subpackage's files
            private = [p for p in parts[2:] if p.startswith("_")]
            private += [a.name for a in node.names if a.name.startswith("_")]
            if private:
                found.append((f"{source}:{node.lineno} -> {target}", lines[node.lineno - 1]))
    return found


def public_names() -> int:
    import importlib
    import pkgutil

    names = len(cf.ERRORS) + 1  # and cf.settings
    for info in pkgutil.walk_packages(cf.__path__, prefix="cellformer."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names += len(getattr(importlib.import_module(info.name), "__all__", ()))
    return names


def test_imports_of_another_packages_private_module_are_few_and_explained():
    found = private_imports()
    assert len(found) <= MAX_PRIVATE_IMPORTS, [f for f, _ in found]
    assert [f for f, line in found if "#" not in line] == []


def test_the_public_surface_does_not_grow():
    assert 100 < public_names() <= MAX_PUBLIC_NAMES


@pytest.mark.xfail(strict=True, reason="issue 40: at most 3 private imports, 120 public names")
def test_issue_40_targets_for_private_imports_and_public_names():
    assert len(private_imports()) <= 3 and public_names() <= 120


def test_model_base_never_imports_a_concrete_model():
    """``model/base/`` is what every model shares: concrete models register themselves."""
    found = sorted(
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        if source.startswith("cellformer.model.base")
        for target in targets
        if target.startswith("cellformer.model.") and not target.startswith("cellformer.model.base")
    )
    assert found == []


def contributing_layers() -> list[list[str]]:
    """The first column of the layer table in docs/contributing.md, bottom up."""
    text = (SRC.parents[1] / "docs" / "contributing.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    table = next(block for block in section.split("\n\n") if block.startswith("| layer"))
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [re.findall(r"`([\w.]+)`", row.split("|")[1]) for row in rows]


def test_contributing_guide_states_the_layers_and_limits_these_tests_check():
    text = (SRC.parents[1] / "docs" / "contributing.md").read_text()
    assert f"over {MAX_LINES} lines" in text
    assert f"over {MAX_CONSTRUCTOR_PARAMETERS} named parameters" in text
    documented = contributing_layers()
    cli = {"__init__", "_cli_files", "_cli_commands"}  # the ``cli`` row's plumbing
    assert {n for row in documented for n in row} == {n for layer in LAYERS for n in layer} - cli
    levels = [max(LEVEL[n] for n in row) for row in documented]
    assert levels == sorted(levels) and len(set(levels)) == len(levels)  # bottom up, one a row
    for row in documented:
        assert len({LEVEL[n] for n in row}) == 1, row  # a row is one layer
