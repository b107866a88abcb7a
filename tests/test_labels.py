import numpy as np
import pytest

from hpa_tf.labels import CLASS_NAMES, LabelError, format_labels, from_multi_hot, parse_labels, to_multi_hot


def test_both_label_forms_and_multi_hot():
    assert len(CLASS_NAMES) == 19 and CLASS_NAMES[18] == "Negative"
    assert parse_labels("16|0|5") == parse_labels("0 5 16") == parse_labels([5, 16, 0]) == [0, 5, 16]
    assert parse_labels(7) == [7] and parse_labels(" 3 ") == [3]
    vec = to_multi_hot("0|5|16")
    assert vec.shape == (19,) and vec.sum() == 3 and vec[[0, 5, 16]].all()
    assert from_multi_hot(vec) == [0, 5, 16]
    assert format_labels([16, 0, 0]) == "0|16"
    assert np.array_equal(to_multi_hot([1, 2]), to_multi_hot("1 2"))


@pytest.mark.parametrize("value, fragment", [("0|19", "out of range"), ("0|x", "'x'"), ("", "empty"), ("-1", "out of range")])
def test_bad_labels_name_row_and_value(value, fragment):
    with pytest.raises(LabelError) as err:
        parse_labels(value, row="img-42")
    assert fragment in str(err.value) and "img-42" in str(err.value)
