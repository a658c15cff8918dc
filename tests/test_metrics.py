"""ACC, BWT, FWT and forgetting on hand-written accuracy matrices (answers worked out on paper below)."""
import math

import numpy as np
import pytest

from continual.metrics import acc, as_matrix, bwt, cl_metrics, forgetting, fwt

N = None  # a cell never evaluated


def test_one_task_sequence_transfers_and_forgets_nothing_by_definition():
    R = [[0.8]]
    assert acc(R) == pytest.approx(0.8)
    assert bwt(R) == 0.0 and fwt(R, [0.3]) == 0.0 and forgetting(R) == 0.0
    assert cl_metrics(R, [0.3]) == {"acc": pytest.approx(0.8), "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0}


def test_two_tasks():
    # R[0] = [0.9, 0.4]   task 1 evaluated before its training (R[0][1], for FWT)
    # R[1] = [0.6, 0.8]
    # b    = [0.5, 0.3]
    # ACC = (0.6 + 0.8) / 2 = 0.7
    # BWT = R[1][0] - R[0][0] = 0.6 - 0.9 = -0.3
    # FWT = R[0][1] - b[1] = 0.4 - 0.3 = 0.1
    # F   = max_{l in [0,0]} R[l][0] - R[1][0] = 0.9 - 0.6 = 0.3
    R = [[0.9, 0.4], [0.6, 0.8]]
    b = [0.5, 0.3]
    assert acc(R) == pytest.approx(0.7)
    assert bwt(R) == pytest.approx(-0.3)
    assert fwt(R, b) == pytest.approx(0.1)
    assert forgetting(R) == pytest.approx(0.3)


def test_three_tasks():
    # R[0] = [0.90, 0.20, N   ]
    # R[1] = [0.70, 0.80, 0.30]
    # R[2] = [0.75, 0.50, 0.60]
    # b    = [0.25, 0.25, 0.20]
    # ACC = (0.75 + 0.50 + 0.60) / 3 = 1.85 / 3 = 0.61666…
    # BWT = ((0.75 - 0.90) + (0.50 - 0.80)) / 2 = (-0.15 - 0.30) / 2 = -0.225
    # FWT = ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.20 - 0.25) + (0.30 - 0.20)) / 2 = 0.025
    # F: task 0: max(R[0][0], R[1][0]) - R[2][0] = max(0.90, 0.70) - 0.75 = 0.15
    #    task 1: max(R[1][1])          - R[2][1] = 0.80 - 0.50          = 0.30
    #    F = (0.15 + 0.30) / 2 = 0.225
    R = [[0.90, 0.20, N], [0.70, 0.80, 0.30], [0.75, 0.50, 0.60]]
    b = [0.25, 0.25, 0.20]
    assert acc(R) == pytest.approx(1.85 / 3)
    assert bwt(R) == pytest.approx(-0.225)
    assert fwt(R, b) == pytest.approx(0.025)
    assert forgetting(R) == pytest.approx(0.225)


def test_forgetting_uses_the_best_earlier_value_not_the_diagonal():
    # Task 0 peaks after task 1 (backward transfer first, then forgetting):
    # R[0][0] = 0.5, R[1][0] = 0.9, R[2][0] = 0.6  ->  F_0 = max(0.5, 0.9) - 0.6 = 0.3 while BWT_0 = 0.6 - 0.5 = +0.1
    # task 1: R[1][1] = 0.7, R[2][1] = 0.7          ->  F_1 = 0.0, BWT_1 = 0.0
    R = [[0.5, N, N], [0.9, 0.7, N], [0.6, 0.7, 0.8]]
    assert forgetting(R) == pytest.approx(0.15)
    assert bwt(R) == pytest.approx(0.05)


def test_isolated_tasks_have_zero_backward_transfer_and_forgetting_exactly():
    R = [[0.81, 0.2, N], [0.81, 0.93, 0.1], [0.81, 0.93, 0.66]]
    assert bwt(R) == 0.0 and forgetting(R) == 0.0


def test_averages_are_per_task_not_per_sample():
    # Whatever the test-set sizes, every task weighs 1/T.
    assert acc([[1.0, N], [0.0, 1.0]]) == 0.5


def test_numpy_input_and_nan_cells():
    R = np.array([[0.9, np.nan], [0.6, 0.8]])
    assert bwt(R) == pytest.approx(-0.3)
    with pytest.raises(ValueError, match=r"FWT needs R cells \[\(0, 1\)\]"):
        fwt(R, [0.5, 0.3])
    assert cl_metrics(R)["fwt"] is None


@pytest.mark.parametrize("R", [[], [[0.1, 0.2]], [[0.1], [0.2]]])
def test_non_square_matrices_are_refused(R):
    with pytest.raises(ValueError, match="square"):
        as_matrix(R)


def test_missing_cells_name_themselves():
    with pytest.raises(ValueError, match=r"ACC needs R cells \[\(1, 0\)\]"):
        acc([[0.9, N], [N, 0.8]])
    with pytest.raises(ValueError, match="b has 1 entries"):
        fwt([[0.9, 0.1], [0.5, 0.8]], [0.2])
    assert math.isnan(as_matrix([[N]])[0, 0])


def test_probe_fwt_on_hand_worked_values():
    from continual.metrics import probe_fwt

    # j=1: 0.70-0.50 = +0.20; j=2: 0.40-0.60 = -0.20; j=0 never counts -> mean 0.0
    assert probe_fwt([0.9, 0.7, 0.4], [0.1, 0.5, 0.6]) == pytest.approx(0.0)
    assert probe_fwt([0.3, 0.8], [0.3, 0.5]) == pytest.approx(0.3)
    assert probe_fwt([0.5], [0.2]) == 0.0
    with pytest.raises(ValueError):
        probe_fwt([0.5, None], [0.2, 0.3])
