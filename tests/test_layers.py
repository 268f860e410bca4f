"""The library's layers: a module of dino_model/ imports only its own layer or lower ones.

A second axis crosses the layers: what the client-only install (dino-mlops-client, no torch) imports
must not import torch, torchvision, timm, kfp or dvc. `test_the_client_path_imports_no_heavy_package`
checks it in a few seconds; tests/test_client_install.py checks the real install.

Every module is parsed with `ast` and every import counts, including those inside functions (lazy
imports still run). The layers, bottom to top, and the reasons for them are drawn in
docs/architecture.md. Pipeline glue (`pipelines`) and KFP components (`components`) sit above the
library: only the command line, dino_model.cli, may reach them (lazily, inside its functions).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "dino_model"

# Bottom to top. A name covers that module and, for a package, everything under it; the root
# package `dino_model` covers only its own __init__.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("dino_model", "dino_model.errors", "dino_model.logs", "dino_model.config")),
    ("runtime", ("dino_model.runtime", "dino_model.monitoring")),
    ("data and models", ("dino_model.data", "dino_model.models")),
    ("loss", ("dino_model.loss",)),
    ("training", ("dino_model.train",)),
    ("evaluation and export", ("dino_model.eval", "dino_model.export")),
    ("model repository", ("dino_model.triton",)),
    ("serving and versioning", ("dino_model.serving", "dino_model.versioning")),
    ("application", ("dino_model.cli",)),
)
RANK = {layer: rank for rank, (layer, _) in enumerate(LAYERS)}
ABOVE_THE_LIBRARY = ("pipelines", "components")
MAY_IMPORT_ABOVE = "dino_model.cli"


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int = 0


def layer_of(module: str) -> str | None:
    """The layer whose longest name covers `module`; None when no layer does."""
    best: tuple[int, str] | None = None
    for layer, names in LAYERS:
        for name in names:
            covers = module == name or (name != "dino_model" and module.startswith(name + "."))
            if covers and (best is None or len(name) > best[0]):
                best = (len(name), layer)
    return best[1] if best else None


def module_name(path: Path, root: Path = LIBRARY) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules(root: Path = LIBRARY) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _is_project(module: str) -> bool:
    return module.split(".")[0] in ("dino_model", *ABOVE_THE_LIBRARY)


def edges_of(module: str, source: str, *, is_package: bool = False, known: frozenset[str] = frozenset()
             ) -> list[Edge]:
    """Every import of a project module in `source` (anywhere in it), relative ones resolved.

    `from a.b import c` names `a.b.c` when that is a known module (a submodule imported by name),
    else `a.b`.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    edges = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                parent = ".".join([*base, node.module] if node.module else base)
            else:
                parent = node.module or ""
            targets = [f"{parent}.{alias.name}" if f"{parent}.{alias.name}" in known else parent
                       for alias in node.names]
        else:
            continue
        edges += [Edge(module, target, node.lineno) for target in targets if _is_project(target)]
    return list(dict.fromkeys(edges))


def library_edges(root: Path = LIBRARY) -> list[Edge]:
    modules = library_modules(root)
    known = frozenset(modules)
    return [edge for name, path in modules.items()
            for edge in edges_of(name, path.read_text(), is_package=path.name == "__init__.py", known=known)]


def violations(edges: list[Edge]) -> list[str]:
    """One line per import that runs up a layer or leaves the library from below the command line."""
    found = []
    for edge in edges:
        where = f"{edge.importer} (line {edge.line})" if edge.line else edge.importer
        if edge.imported.split(".")[0] in ABOVE_THE_LIBRARY:
            if not (edge.importer == MAY_IMPORT_ABOVE or edge.importer.startswith(MAY_IMPORT_ABOVE + ".")):
                found.append(f"{where} [layer {layer_of(edge.importer)}] imports {edge.imported}, above the "
                             f"library: only {MAY_IMPORT_ABOVE}.* may import {' or '.join(ABOVE_THE_LIBRARY)}")
            continue
        importer_layer, imported_layer = layer_of(edge.importer), layer_of(edge.imported)
        if importer_layer is None or imported_layer is None:
            found.append(f"{where} imports {edge.imported}: no layer for "
                         f"{edge.importer if importer_layer is None else edge.imported} (add it to LAYERS)")
        elif RANK[imported_layer] > RANK[importer_layer]:
            found.append(f"{where} [layer {importer_layer}] imports {edge.imported} "
                         f"[layer {imported_layer}], a higher layer")
    return found


def test_every_library_module_has_a_layer() -> None:
    unplaced = [name for name in library_modules() if layer_of(name) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS and docs/architecture.md): {unplaced}"


def test_no_import_runs_up_a_layer_and_only_the_cli_imports_pipelines() -> None:
    edges = library_edges()
    assert len(edges) > 100, "the import graph looks empty: is LIBRARY right?"
    found = violations(edges)
    assert not found, "imports against the layering (docs/architecture.md):\n" + "\n".join(found)


def test_an_upward_import_names_both_modules_and_both_layers() -> None:
    found = violations([Edge("dino_model.loss", "dino_model.train.schedules", 13)])
    assert found == ["dino_model.loss (line 13) [layer loss] imports dino_model.train.schedules "
                     "[layer training], a higher layer"]
    found = violations([Edge("dino_model.models.loading", "dino_model.export.lineage")])
    assert len(found) == 1
    assert all(part in found[0] for part in ("dino_model.models.loading", "data and models",
                                             "dino_model.export.lineage", "evaluation and export"))


@pytest.mark.parametrize("importer", ["dino_model.serving.gate", "dino_model.train.loop", "dino_model.errors"])
@pytest.mark.parametrize("imported", ["pipelines.submit", "components.train", "pipelines"])
def test_pipelines_and_components_are_for_the_cli_only(importer: str, imported: str) -> None:
    (message,) = violations([Edge(importer, imported)])
    assert importer in message and imported in message and "only dino_model.cli.*" in message
    assert violations([Edge("dino_model.cli.retrain", imported), Edge("dino_model.cli", imported)]) == []


def test_same_layer_and_downward_imports_pass() -> None:
    assert violations([
        Edge("dino_model.train.loop", "dino_model.loss"),
        Edge("dino_model.train.loop", "dino_model.train.optim"),
        Edge("dino_model.export.export_run", "dino_model.eval.report"),
        Edge("dino_model.models.loading", "dino_model.runtime.checkpoint"),
        Edge("dino_model.cli.serving", "dino_model.serving.rollout"),
        Edge("dino_model.config", "dino_model.errors"),
    ]) == []


def test_a_module_in_no_layer_is_reported() -> None:
    (message,) = violations([Edge("dino_model.newthing", "dino_model.errors")])
    assert "no layer for dino_model.newthing" in message


def test_imports_inside_functions_and_relative_imports_count() -> None:
    source = '''
import numpy as np
from dino_model.errors import DinoError


def later():
    from dino_model.serving import client
    import pipelines.submit
    from . import schedules
    from ..export.lineage import verified_lineage
'''
    known = frozenset({"dino_model.serving.client", "dino_model.train.schedules"})
    edges = edges_of("dino_model.train.loop", source, known=known)
    assert {(edge.imported, edge.line) for edge in edges} == {
        ("dino_model.errors", 3), ("dino_model.serving.client", 7), ("pipelines.submit", 8),
        ("dino_model.train.schedules", 9), ("dino_model.export.lineage", 10)}
    assert len(violations(edges)) == 3


# What the client-only install imports: the whole command line (its parser is built at every call),
# the served-model contract, the gRPC client, `infer` and its k-NN vote, the similarity index and drift.
CLIENT_IMPORTS = ("dino_model.cli.main", "dino_model.export.contract", "dino_model.serving.client",
                  "dino_model.serving.inference", "dino_model.serving.index", "dino_model.monitoring.drift")
HEAVY = ("torch", "torchvision", "timm", "kfp", "dvc")
CLIENT_CHECK = """
import sys, traceback
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {heavy!r}:
            raise ImportError(f"the client-only install has no {{name}}")
sys.meta_path.insert(0, Block())
try:
    for module in {modules!r}:
        __import__(module)
    from dino_model.cli.main import build_parser
    build_parser()
except ImportError:
    traceback.print_exc()
    sys.exit(1)
"""


def test_the_client_path_imports_no_heavy_package() -> None:
    code = CLIENT_CHECK.format(heavy=HEAVY, modules=CLIENT_IMPORTS)
    done = subprocess.run([sys.executable, "-c", code], cwd=LIBRARY.parent, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
