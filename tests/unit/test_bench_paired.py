"""benchmarks.measure.paired: warm-up rounds run and are dropped, the timed ones interleave the variants.

The smoke test runs the harness with --warmup 0 (it checks that the cases run, not their figures), so the
warm-up that real benchmark runs rely on is pinned here."""

from __future__ import annotations

import pytest
from benchmarks.measure import Sample, Variant, paired


def variants(calls: list[str]) -> list[Variant]:
    def sampler(key: str):
        def sample() -> Sample:
            calls.append(key)
            return Sample(wall=float(len(calls)))

        return sample

    return [Variant("A", "a", sampler("A")), Variant("B", "b", sampler("B"))]


@pytest.mark.parametrize("warmup", [0, 1, 2])
def test_warm_up_rounds_run_first_and_are_not_kept(warmup):
    calls: list[str] = []
    samples = paired(variants(calls), 3, warmup=warmup)
    assert calls == ["A", "B"] * (warmup + 3)  # interleaved, warm-up rounds included
    # The kept samples are the last three rounds' (wall = the call's position, 1-based).
    assert [s.wall for s in samples["A"]] == [2.0 * (warmup + r) + 1 for r in range(3)]
    assert [s.wall for s in samples["B"]] == [2.0 * (warmup + r) + 2 for r in range(3)]


def test_one_warm_up_round_by_default():
    calls: list[str] = []
    samples = paired(variants(calls), 1)
    assert calls == ["A", "B", "A", "B"] and [s.wall for s in samples["A"]] == [3.0]


def test_the_command_line_takes_warmup_and_refuses_a_negative_one(capsys):
    from benchmarks.cli import parse

    assert parse([]).warmup == 1 and parse(["--warmup", "0"]).warmup == 0
    with pytest.raises(SystemExit) as exc:
        parse(["--warmup", "-1"])
    assert exc.value.code == 2 and "--warmup must be 0 or more" in capsys.readouterr().err
