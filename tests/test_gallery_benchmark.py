"""benchmarks/gallery_search.py runs tiny and reports consistent rows (the numbers are in the README)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gallery_search.py"


def test_gallery_search_benchmark_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gallery_search", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    faiss = ["--faiss", "flat"] if importlib.util.find_spec("faiss") else []
    out = tmp_path / "g.json"
    rows = bench.main(["--sizes", "3000", "12000", "--dim", "32", "--probes", "6", "--reps", "1",
                       "--json", str(out), *faiss])
    assert [r["entries"] for r in rows] == [3000, 12000]
    for r in rows:
        for kind in ("unmasked", "masked"):
            assert r[f"{kind}_probe_ms"] > 0 and r[f"{kind}_numpy_ms"] > 0
            # ms are printed to 3 decimals: the ratio of the rounded values agrees to a few percent
            assert r[f"{kind}_ratio"] == pytest.approx(r[f"{kind}_probe_ms"] / r[f"{kind}_numpy_ms"], rel=0.1)
        if faiss:  # the exact faiss index finds what the gallery finds
            assert r["faiss_flat_top1_agreement"] == 1.0
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and "worst ratio" in capsys.readouterr().out
