"""docs/critique_grpo.ipynb runs top to bottom, and is committed without outputs.

The test runs it with CRITIQUE_GRPO_NOTEBOOK=tiny: its first code cell then takes the tiny random
model and the few questions written here into CRITIQUE_GRPO_NOTEBOOK_DIR, and trains 2 steps instead
of the embedded model's 6, for each of its two runs (Critique-GRPO and GRPO). Needs nbclient, nbformat and ipykernel
(requirements.txt); the kernel is this interpreter's, from a kernelspec the test writes.
"""
import json
import os
import time

from conftest import ROOT, make_model, make_tokenizer

NOTEBOOK = ROOT / "docs" / "critique_grpo.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())  # plain JSON: this check needs no Jupyter package
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "no code cells"
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and
             (c["outputs"] or c["execution_count"] is not None)]
    assert not dirty, (f"cells {dirty} of {NOTEBOOK.name} hold outputs: strip them before "
                       f"committing (jupyter nbconvert --clear-output --inplace {NOTEBOOK})")


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    import nbclient
    import nbformat
    from ipykernel import kernelspec

    from data.make_data import make_rephrased, make_splits

    # a kernel of this very interpreter, whatever kernelspecs the machine has (none, or another
    # environment's `python3`): written here, found first through JUPYTER_PATH
    kernelspec.write_kernel_spec(tmp_path / "jupyter" / "kernels" / "critique-grpo-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    tok = make_tokenizer()
    make_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    train, test = make_splits(8, 2, seed=0)
    for name, rows in (("train", train), ("test", test), ("test_rephrased", make_rephrased(2, 0))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the kernel inherits this environment
    monkeypatch.setenv("CRITIQUE_GRPO_NOTEBOOK", "tiny")
    monkeypatch.setenv("CRITIQUE_GRPO_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    t = time.perf_counter()
    # a cell that raises fails the test (CellExecutionError names the cell and the traceback)
    nbclient.NotebookClient(nb, kernel_name="critique-grpo-test", timeout=300,
                            resources={"metadata": {"path": str(ROOT / "docs")}}).execute()
    print(f"notebook ran in {time.perf_counter() - t:.1f} s")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, errors
    code = [c for c in nb.cells if c.cell_type == "code"]
    last = code[-1]
    assert "plt.show()" in last.source
    assert any("image/png" in o.get("data", {}) for o in last.outputs), \
        "the last cell (the training curves) drew no image"
    shaping_plot = next(c for c in code if "L.shaping(lp_grid" in c.source)
    assert any("image/png" in o.get("data", {}) for o in shaping_plot.outputs)
    text = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
    assert "notebook wall time" in text
    # Critique-GRPO and GRPO, at the same seed, side by side
    for arm in ("cg_gt", "dr_grpo"):
        config = json.loads((tmp_path / "run" / arm / "config.json").read_text())
        assert config["seed"] == 0 and (tmp_path / "run" / arm / "metrics.jsonl").exists()
        assert config["critique_type"] == ("none" if arm == "dr_grpo" else "indicative_gt")
