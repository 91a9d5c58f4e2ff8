"""Statistics over seeds (cvattn_mm.analysis.seeds) and their report (seed_report): known
numbers worked out by hand, the verdict's rule, the files written."""
import json
import math

import pytest

from cvattn_mm.analysis.runs import RunResult
from cvattn_mm.analysis.seed_report import format_seed_table, write_seed_report
from cvattn_mm.analysis.seeds import (
    NO_CLEAR_DIFFERENCE,
    sample_std,
    summarize,
    train_over_seeds,
    verdict,
)

SEEDS = [0, 1, 2]
# metric per seed; by hand: baseline mean 82, sample std 2; 'SE' mean 92, std sqrt(7),
# differences 10, 9, 11 (mean 10, std 1); 'ECA' differences 1, -2, 2; 'SimAM' differences
# -2, -2, -2 (std 0), which do not exceed the baseline's spread of 2; 'CBAM' mean 72,
# std sqrt(7), differences -10, -7, -13 (mean -10, std 3).
METRICS = {
    'ResNet': [80.0, 82.0, 84.0],
    'SE': [90.0, 91.0, 95.0],
    'ECA': [81.0, 80.0, 86.0],
    'SimAM': [78.0, 80.0, 82.0],
    'CBAM': [70.0, 75.0, 71.0],
}


def runs(name, metrics, params=1000, attention=0):
    return [RunResult(name=name, metric_name='top-1 (%)', metric=m, params=params + attention,
                      attention_params=attention, train_seconds=10.0 + i, latency_ms=2.0,
                      work_dir=f'work/{name}/seed_{s}')
            for i, (s, m) in enumerate(zip(SEEDS, metrics))]


def summaries():
    return summarize([(name, runs(name, m, attention=0 if name == 'ResNet' else 50))
                      for name, m in METRICS.items()], SEEDS)


def test_sample_std_of_known_numbers():
    assert sample_std([80.0, 82.0, 84.0]) == pytest.approx(2.0)
    assert sample_std([90.0, 91.0, 95.0]) == pytest.approx(math.sqrt(7.0))
    assert sample_std([3.0, 3.0]) == 0.0
    assert math.isnan(sample_std([5.0]))


def test_summaries_of_known_numbers():
    baseline, se, eca, simam, cbam = summaries()
    assert (baseline.mean, baseline.std, baseline.verdict) == (82.0, pytest.approx(2.0),
                                                               'baseline')
    assert baseline.diffs is None and baseline.train_seconds == 11.0
    assert (se.mean, se.std) == (92.0, pytest.approx(math.sqrt(7.0)))
    assert se.diffs == [10.0, 9.0, 11.0]
    assert (se.diff_mean, se.diff_std) == (10.0, pytest.approx(1.0))
    assert se.verdict == 'better'
    assert eca.diffs == [1.0, -2.0, 2.0] and eca.verdict == NO_CLEAR_DIFFERENCE
    # the same sign in every seed, but not more than the baseline's seed spread (2.0)
    assert simam.diffs == [-2.0, -2.0, -2.0] and simam.diff_std == 0.0
    assert simam.verdict == NO_CLEAR_DIFFERENCE
    assert cbam.diffs == [-10.0, -7.0, -13.0] and cbam.diff_std == pytest.approx(3.0)
    assert cbam.verdict == 'worse'
    assert (cbam.params, cbam.attention_params) == (1050, 50)


@pytest.mark.parametrize('diffs, spread, expected', [
    ([3.0, 2.0, 4.0], 2.9, 'better'),
    ([3.0, 2.0, 4.0], 3.0, NO_CLEAR_DIFFERENCE),  # the mean must exceed the spread
    ([3.0, -0.5, 4.0], 0.1, NO_CLEAR_DIFFERENCE),  # one seed of the other sign
    ([-3.0, -2.0], 1.0, 'worse'),
    ([0.0, 5.0], 1.0, NO_CLEAR_DIFFERENCE),  # a tie is no sign
    ([9.0], 0.0, f'{NO_CLEAR_DIFFERENCE} (one seed)'),
])
def test_verdict_needs_one_sign_in_every_seed_and_a_mean_beyond_the_spread(diffs, spread,
                                                                            expected):
    assert verdict(diffs, spread) == expected


def test_table_json_and_plot(tmp_path):
    paths = write_seed_report(summaries(), str(tmp_path), 'results', 'Quickstart, test')
    table = format_seed_table(summaries())
    lines = table.splitlines()
    assert lines[0].startswith('| model | top-1 (%) mean ± std | seeds 0/1/2 | vs baseline |')
    se_row = [c.strip() for c in lines[3].strip('|').split('|')]
    assert se_row[:6] == ['SE', '92.00 ± 2.65', '90.00 / 91.00 / 95.00', '+10.00 ± 1.00',
                          '+10.00 / +9.00 / +11.00', 'better']
    assert (tmp_path / 'results.md').read_text() == f'# Quickstart, test\n\n{table}\n'
    data = json.loads((tmp_path / 'results.json').read_text())
    assert data['seeds'] == SEEDS and [m['name'] for m in data['models']] == list(METRICS)
    se = data['models'][1]
    assert se['metrics'] == METRICS['SE'] and se['diffs'] == [10.0, 9.0, 11.0]
    assert [(r['seed'], r['metric'], r['work_dir']) for r in se['runs']] == [
        (0, 90.0, 'work/SE/seed_0'), (1, 91.0, 'work/SE/seed_1'), (2, 95.0, 'work/SE/seed_2')]
    with open(paths['png'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_one_seed_has_no_spread(tmp_path):
    one = summarize([('ResNet', runs('ResNet', [80.0])[:1]), ('SE', runs('SE', [85.0])[:1])],
                    [0])
    assert one[1].verdict == f'{NO_CLEAR_DIFFERENCE} (one seed)'
    assert '| SE | 85.00 | 85.00 | +5.00 | +5.00 |' in format_seed_table(one)
    paths = write_seed_report(one, str(tmp_path), 'one')
    data = json.loads((tmp_path / 'one.json').read_text())  # strict JSON: no NaN
    assert data['models'][1]['std'] is None and data['models'][1]['diff_std'] is None
    assert (tmp_path / 'one.png').stat().st_size > 0 and set(paths) == {'md', 'json', 'png'}


def test_errors():
    with pytest.raises(ValueError, match='SE has 2 runs for 3 seeds'):
        summarize([('ResNet', runs('ResNet', METRICS['ResNet'])),
                   ('SE', runs('SE', METRICS['SE'])[:2])], SEEDS)
    with pytest.raises(ValueError, match=r'seeds must be distinct.*\[1, 1\]'):
        train_over_seeds([], [1, 1])
    with pytest.raises(ValueError, match='model names must be distinct'):
        train_over_seeds([('a', None, 'x'), ('a', None, 'y')], [0])
