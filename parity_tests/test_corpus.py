"""The verdict corpus as tests: healthy runs pass, planted porting bugs fail and are localised.

The default suite runs one healthy case and one bug (the machinery, within the suite's budget);
`pytest -m corpus` (or `make corpus`) runs every case.
"""

import pytest

from jaxtrain.parity.corpus import BUGS, HEALTHY, QUICK_BUGS, QUICK_HEALTHY, load_data, run_case


def _params(names, quick):
    return [pytest.param(n, marks=() if n in quick else pytest.mark.corpus) for n in names]


@pytest.fixture(scope="module")
def corpus_data(fashion):
    return load_data()


@pytest.mark.parametrize("case", _params(HEALTHY, QUICK_HEALTHY))
def test_healthy_run_passes_all_three_parts(case, corpus_data):
    row = run_case(case, corpus_data)
    assert row["ok"], (case, row["parts"], row["where"], row["stats"])
    assert row["passed"] or row.get("finding"), (case, row["parts"])  # a finding says what it is
    if row["parts"]["same_math"] is not None and not row.get("library_finding"):
        assert row["stats"]["math_steps_beyond_rounding"] <= 1 or row["stats"]["math_localised"]["stage"] == "drift"


@pytest.mark.parametrize("case", _params(BUGS, QUICK_BUGS))
def test_planted_bug_is_caught_and_localised(case, corpus_data):
    row = run_case(case, corpus_data)
    assert row["caught"], (case, row["parts"])
    assert row["localised_right"], (case, row["expected"], row["localised"])
    assert row["ok"], (case, "diagnosed", row["diagnosis"], "expected", BUGS[case].trap)


def test_corpus_is_large_enough():
    assert len(HEALTHY) >= 25 and len(BUGS) >= 12
    real = [n for n in HEALTHY if n.startswith(("real_", "hf_"))]
    assert len(real) >= 25 and len([n for n in real if n.startswith("hf_")]) >= 6
