"""notebooks/walkthrough.ipynb runs from top to bottom on a slice of the shared data."""

from __future__ import annotations

from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_runs(medium_archive, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # The kernel inherits it. The 2,000-image slice of the shared copy, same layout: the notebook trains on
    # 2,000 images either way, and validates and tests on the slice's 500 test images instead of 10,000.
    monkeypatch.setenv("CIFARLAB_DATA", str(medium_archive))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "report.html" in text and "test accuracy" in text and "→" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # sample images, curves, the test image, its Grad-CAM
    assert list((tmp_path / "runs").glob("walkthrough-*/report.html"))  # written where the notebook ran
