"""Fixtures of the data tests."""

import pytest
from voc_helpers import write_voc_root


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "voc"
    write_voc_root(root)
    return root
