import numpy as np
import pytest

from racer_online.errors import RecordsFormatError
from racer_online.records import Records, read_records, write_records

GOOD = """query_id,scope,p:a,p:b,y:a,y:b,p:__abstain__,cost:a,cost:b
q1,s,0.9,0.1,1,0,0.05,0.2,0.9
q2,s,0.3,0.6,,1,0.2,0.2,0.9
"""


def write(tmp_path, text):
    path = tmp_path / "records.csv"
    path.write_text(text)
    return path


def test_reads_every_column(tmp_path):
    records = read_records(write(tmp_path, GOOD))
    assert records.query_ids == ("q1", "q2")
    assert records.models == ("a", "b")
    assert records.scopes == ("s", "s")
    np.testing.assert_allclose(records.scores, [[0.9, 0.1], [0.3, 0.6]])
    np.testing.assert_array_equal(records.labels, [[1, 0], [np.nan, 1]])
    np.testing.assert_allclose(records.p_abstain, [0.05, 0.2])
    np.testing.assert_allclose(records.costs, [[0.2, 0.9], [0.2, 0.9]])
    assert records.fully_graded().query_ids == ("q1",)


def test_write_then_read_round_trips(tmp_path):
    records = Records(
        query_ids=("x", "y", "z"),
        models=("m0", "m1"),
        scores=np.array([[0.5, 0.25], [1.0, 0.0], [0.125, 0.75]]),
        labels=np.array([[1, 0], [np.nan, 1], [0, 0]], dtype=float),
        p_abstain=np.array([0.1, 0.2, 0.3]),
    )
    path = tmp_path / "out.csv"
    write_records(path, records)
    back = read_records(path)
    assert back.query_ids == records.query_ids and back.models == records.models
    np.testing.assert_allclose(back.scores, records.scores)
    np.testing.assert_array_equal(back.labels, records.labels)
    np.testing.assert_allclose(back.p_abstain, records.p_abstain)
    assert back.costs is None and back.scopes is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("query_id,p:a,y:a\n", "no records"),
        ("id,p:a,y:a\nq,0.5,1\n", "no query_id column"),
        ("query_id,y:a\nq,1\n", "no p:<model> score columns"),
        ("query_id,p:a\nq,0.5\n", "score column p:a has no label column y:a"),
        ("query_id,p:a,y:a,y:b\nq,0.5,1,1\n", "column y:b names no model"),
        ("query_id,p:a,y:a,p:a\nq,0.5,1,0.5\n", "duplicate column names"),
        ("query_id,p:a,y:a\nq,0.5\n", "line 2: 2 fields, the header has 3"),
        ("query_id,p:a,y:a\nq,high,1\n", "line 2, column p:a: 'high' is not a number"),
        ("query_id,p:a,y:a\nq,1.5,1\n", r"line 2, column p:a: '1.5' is not in \[0, 1\]"),
        ("query_id,p:a,y:a\nq,nan,1\n", r"column p:a: 'nan' is not in \[0, 1\]"),
        ("query_id,p:a,y:a\nq,0.5,2\n", "column y:a: labels must be 0, 1 or blank"),
        ("query_id,p:a,y:a\n,0.5,1\n", "line 2: empty query_id"),
        ("query_id,p:a,y:a,cost:a\nq,0.5,1,-1\n", "column cost:a: '-1' is not in >= 0"),
        ("query_id,p:a,p:b,y:a,y:b,cost:a\nq,0.5,0.5,1,1,1\n", "for every model or none"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(RecordsFormatError, match=message):
        read_records(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(RecordsFormatError, match="No such file"):
        read_records(tmp_path / "absent.csv")
