"""examples/train-on-a-cluster.ipynb runs top to bottom (nbclient), so it cannot rot: it
connects to a local cluster, trains on the real CMS files in ../shared/data, scores them on
the cluster and checks (inside the notebook) that the scored test split gives the
training's AUC."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOK = REPO / "examples" / "train-on-a-cluster.ipynb"


@pytest.mark.slow
def test_example_notebook_executes(tmp_path: Path, shared_data: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MLAAS_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MLAAS_CLUSTER", "local:2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(str(output.get("text", "")) + str(output.get("data", {}))
                     for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs)
    assert "Dashboard: http://127.0.0.1:" in text
    assert "AUC from the scored files:" in text
    assert "image/png" in text  # the ROC curve and score distributions were drawn
    assert (tmp_path / "bundle" / "model.ubj").is_file()
    assert (tmp_path / "scores" / "scores.parquet").is_file()
