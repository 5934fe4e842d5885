"""Per-key metric labels are opt-in and capped, so label sets stay bounded."""

from __future__ import annotations

from fastgw.metrics import Recorder


def test_key_labels_are_off_by_default() -> None:
    assert Recorder().key_label("team-a") == ""


def test_key_labels_are_capped() -> None:
    rec = Recorder(key_labels=True, max_key_labels=2)
    assert rec.key_label("a") == "a"
    assert rec.key_label("b") == "b"
    assert rec.key_label("c") == "_other"
    assert rec.key_label("a") == "a"
    assert rec.key_label(None) == ""


def _samples(metric: object, labels: dict[str, str]) -> dict[tuple[str, str], float]:
    out = {}
    for fam in metric.collect():  # type: ignore[attr-defined]
        for s in fam.samples:
            if all(s.labels.get(k) == v for k, v in labels.items()):
                out[(s.name, s.labels.get("le", ""))] = s.value
    return out


def test_batched_histograms_and_counters_equal_direct_observation() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from fastgw import metrics

    values = [0.0, 0.003, 0.005, 0.0051, 0.7, 1.0, 59.0, 1000.0, 0.01]
    direct = Histogram("direct_check", "x", ["model"], buckets=metrics.DURATION._upper_bounds[:-1],
                       registry=CollectorRegistry())
    for v in [*values, 0.0]:
        direct.labels("m").observe(v)
    before = _samples(metrics.DURATION, {"model": "batch-check"})
    # Counters are process-wide: what this test adds is the change.
    tokens_before = metrics.TOKENS.labels("batch-check", "output")._value.get()
    requests_before = metrics.REQUESTS.labels("batch-check", "p", "200")._value.get()
    rec = Recorder()
    for v in values:
        rec.finished("batch-check", "p", 200, "batch-check", None, v, -1.0, 0.0, 0, 0, 0.0)
    rec.finished("batch-check", "p", 200, "batch-check", None, 0.0, -1.0, 0.0, 5, 7, 0.0)
    values.append(0.0)
    pending = _samples(metrics.DURATION, {"model": "batch-check"})
    assert all(v == before.get(k, 0.0) for k, v in pending.items()
               if not k[0].endswith("_created"))  # nothing reaches prometheus before flush
    rec.flush()
    after = _samples(metrics.DURATION, {"model": "batch-check"})
    expect = {(n.replace("direct_check", "fastgw_request_duration_seconds"), le): v
              for (n, le), v in _samples(direct, {"model": "m"}).items()}
    for key, value in expect.items():
        if key[0].endswith("_created"):
            continue
        assert after[key] - before.get(key, 0.0) == value, key
    assert metrics.TOKENS.labels("batch-check", "output")._value.get() - tokens_before == 7
    assert (metrics.REQUESTS.labels("batch-check", "p", "200")._value.get() - requests_before
            == len(values))


def test_cost_and_tokens_go_to_the_serving_model_and_the_capped_key() -> None:
    from fastgw import metrics

    def values() -> tuple[float, ...]:
        return (metrics.COST.labels("served-m", "k1")._value.get(),
                metrics.COST.labels("served-m", "_other")._value.get(),
                metrics.TOKENS.labels("served-m", "input")._value.get(),
                metrics.REQUESTS.labels("asked-m", "p", "200")._value.get())

    before = values()  # counters are process-wide: what this test adds is the change
    rec = Recorder(key_labels=True, max_key_labels=1)
    rec.finished("asked-m", "p", 200, "served-m", "k1", 0.1, 0.05, 0.0001, 3, 4, 0.5)
    rec.finished("asked-m", "p", 200, "served-m", "k2", 0.1, -1.0, 0.0, 0, 0, 0.25)
    rec.flush()
    after = values()
    assert [a - b for a, b in zip(after, before, strict=True)] == [0.5, 0.25, 3, 2]
