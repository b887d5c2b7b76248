"""Layers point one way: a part of the package imports only the parts below it (lazy imports count),
and no modules import each other in a cycle. Read as text with tools/code_report.py's reader."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bottom first: each part may import the parts listed before it
LAYERS = ["settings", "images", "models", "sampling", "extras", "restoration", "methods", "parallel", "training",
          "evaluation", "ui", "cli", "__main__"]


def _report():
    spec = importlib.util.spec_from_file_location("code_report", ROOT / "tools" / "code_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_imports_point_down_and_never_round():
    report = _report()
    edges = report.imports(ROOT / "noisecorr_app")
    assert edges, "the reader found no imports at all"
    upward = [f"{a} -> {b}" for a, targets in edges.items() for b in targets
              if part(a) != part(b) and part(a) in LAYERS and part(b) in LAYERS
              and LAYERS.index(part(b)) > LAYERS.index(part(a))]
    assert not upward, upward
    unknown = {part(m) for m in edges} - set(LAYERS) - {"__init__"}
    assert not unknown, f"place these parts in LAYERS: {unknown}"
    assert report.cycles(edges) == []
