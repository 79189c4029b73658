from __future__ import annotations

import argparse
import random

import pytest

from epctl.config import add_flag, env_name
from epctl.kube.backoff import Backoff


def test_backoff_grows_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(1.0, 60.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    for attempt, delay in enumerate(delays):
        ceiling = min(60.0, 2.0 ** attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jitter: no two equal
    assert backoff.next_delay(at_least=120.0) == 120.0  # Retry-After wins
    backoff.reset()
    assert backoff.next_delay() <= 1.0
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


def test_flags_have_env_equivalents_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_name("--max-batch-delay") == "EPCTL_MAX_BATCH_DELAY"
    monkeypatch.setenv("EPCTL_PORT", "7000")
    monkeypatch.setenv("EPCTL_DEBUG", "yes")
    parser = argparse.ArgumentParser()
    add_flag(parser, "--port", default=1, type=int)
    add_flag(parser, "--debug", default=False, boolean=True)
    add_flag(parser, "--name", default="d", env=["SEED_NAME"])
    assert vars(parser.parse_args([])) == {"port": 7000, "debug": True, "name": "d"}
    assert parser.parse_args(["--port", "9", "--no-debug"]).port == 9
    monkeypatch.setenv("SEED_NAME", "from-seed")
    parser2 = argparse.ArgumentParser()
    add_flag(parser2, "--name", default="d", env=["SEED_NAME"])
    assert parser2.parse_args([]).name == "from-seed"
    monkeypatch.setenv("EPCTL_PORT", "not-a-number")
    with pytest.raises(SystemExit):
        add_flag(argparse.ArgumentParser(), "--port", default=1, type=int)


def test_readme_configuration_reference_matches_the_flags() -> None:
    from pathlib import Path

    from epctl.cli import flag_reference

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    published = readme.split("<!-- flags:begin -->\n", 1)[1].split("<!-- flags:end -->", 1)[0]
    assert published == flag_reference(), "README flag reference is stale: regenerate it (see README)"


async def test_cancel_and_wait_resends_a_swallowed_cancellation() -> None:
    """A task that swallows a cancellation (as asyncio.wait_for can on Python 3.11) still stops."""
    import asyncio

    from epctl.tasks import cancel_and_wait

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed >= 2:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, resend=0.05), 5)
    assert task.cancelled() and swallowed == 2
