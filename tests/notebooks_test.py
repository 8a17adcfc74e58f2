"""Every notebook runs top to bottom in its small settings (issue: CI runs
them), and the committed files carry no outputs and no local paths."""

import glob
import os

import jax
import nbclient  # the `test` extra: CI must run the notebooks, never skip
import nbformat
import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'notebooks',
    '*.ipynb')))


def test_there_are_four_notebooks():
  assert [os.path.basename(p)[:3] for p in NOTEBOOKS] == ['01_', '02_', '03_',
                                                          '04_']


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_committed_without_outputs_or_local_paths(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None
  with open(path, encoding='utf-8') as f:
    text = f.read()
  for local in ('/work/', '/root/', '/home/', '/tmp/', 'shared/data'):
    assert local not in text, local
  # The first code cell installs jard (Colab); the notebooks import it.
  first = next(c for c in notebook.cells if c.cell_type == 'code')
  assert 'pip' in first.source and 'import jard' in first.source


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_runs_top_to_bottom_in_small_settings(path, tmp_path, monkeypatch):
  monkeypatch.setenv('JARD_NOTEBOOK_SMALL', '1')
  monkeypatch.setenv('JARD_WORKDIR', str(tmp_path / 'work'))
  # One CPU device, as in Colab (the tests force 8); conftest's faster
  # compile level.
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=1')
  # The kernel shares this worker's compilation cache (conftest): the
  # notebooks run the same small programs (e.g. the :quick teachers).
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR',
                     jax.config.jax_compilation_cache_dir)
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', str(
      jax.config.jax_persistent_cache_min_compile_time_secs))
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': os.path.dirname(path)}})
  client.execute()  # raises CellExecutionError on any failing cell
  errors = [o for c in notebook.cells if c.cell_type == 'code'
            for o in c.outputs if o.output_type == 'error']
  assert not errors
