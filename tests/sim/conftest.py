"""A small simulator dataset, shared by the dataset and DAgger tests."""
from __future__ import annotations

import pytest

from mobilevlm_agent.cli import main


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("simdata")
    assert main(["sim", "dataset", "--out", str(out), "--scenes", "2", "--views", "4", "--episodes", "1", "--seed", "5"]) == 0
    return out
