"""Numeric settings from the environment (pipeline.common.env): a typo names the variable and what it
accepts; it never silently becomes the default (before, the S3 retry settings fell back quietly and
the shard settings failed with a bare `invalid literal for int()`)."""

from __future__ import annotations

import pytest

from pipeline.common import storage
from pipeline.common.env import env_float, env_int
from pipeline.forecast.shards import shard_count


def test_unset_or_blank_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEERSCALE_TEST_N", raising=False)
    assert env_int("PEERSCALE_TEST_N", 5) == 5 and env_float("PEERSCALE_TEST_N", 0.2) == 0.2
    monkeypatch.setenv("PEERSCALE_TEST_N", "  ")
    assert env_int("PEERSCALE_TEST_N", 5) == 5
    monkeypatch.setenv("PEERSCALE_TEST_N", " 7 ")
    assert env_int("PEERSCALE_TEST_N", 5, 1, 10) == 7 and env_float("PEERSCALE_TEST_N", 0.2) == 7.0


@pytest.mark.parametrize(("value", "message"), [
    ("abc", "PEERSCALE_TEST_N='abc' is not a whole number; use 1 to 10 (default 5)"),
    ("2.5", "PEERSCALE_TEST_N='2.5' is not a whole number"),
    ("0", "PEERSCALE_TEST_N=0 is out of range; use 1 to 10 (default 5)"),
    ("11", "PEERSCALE_TEST_N=11 is out of range"),
])
def test_a_bad_whole_number_is_named(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("PEERSCALE_TEST_N", value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        env_int("PEERSCALE_TEST_N", 5, 1, 10)


@pytest.mark.parametrize("value", ["fast", "-1", "nan", "inf"])
def test_a_bad_number_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PEERSCALE_TEST_X", value)
    with pytest.raises(ValueError, match=r"^PEERSCALE_TEST_X="):
        env_float("PEERSCALE_TEST_X", 0.2)


def test_the_s3_retry_and_shard_settings_refuse_typos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(storage.MAX_ATTEMPTS_ENV, "five")
    with pytest.raises(ValueError, match=f"{storage.MAX_ATTEMPTS_ENV}='five' is not a whole number"):
        storage.with_retries("read", "s3://bucket/key", lambda: b"")
    assert storage.with_retries("read", "/tmp/local", lambda: b"x") == b"x", "local paths never read the S3 settings"
    monkeypatch.setenv("PEERSCALE_FORECAST_MAX_SHARDS", "lots")
    with pytest.raises(ValueError, match="PEERSCALE_FORECAST_MAX_SHARDS='lots' is not a whole number"):
        shard_count(100)
    monkeypatch.setenv("PEERSCALE_FORECAST_MAX_SHARDS", "0")
    with pytest.raises(ValueError, match="PEERSCALE_FORECAST_MAX_SHARDS=0 is out of range"):
        shard_count(100)


def test_the_training_zoo_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.forecast.training import BASE_ZOO, default_zoo

    monkeypatch.delenv("PEERSCALE_TRAIN_MODELS", raising=False)
    assert default_zoo()[: len(BASE_ZOO)] == BASE_ZOO
    monkeypatch.setenv("PEERSCALE_TRAIN_MODELS", " seasonal_naive, auto_ets ,seasonal_naive")
    assert default_zoo() == ("seasonal_naive", "auto_ets")
    monkeypatch.setenv("PEERSCALE_TRAIN_MODELS", "seasonal_naive,propet")
    with pytest.raises(ValueError, match=r"PEERSCALE_TRAIN_MODELS=.*unknown models \['propet'\]; known: .*prophet"):
        default_zoo()
