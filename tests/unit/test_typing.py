"""tests/typing/check_send.py: mypy accepts it, and it runs."""

from __future__ import annotations

from pathlib import Path

from mypy import api

from catga import Mediator
from tests.typing import check_send

ROOT = Path(__file__).resolve().parents[2]


class TestTypedSend:
    def test_mypy_accepts_the_typed_usage(self) -> None:
        """mypy --strict finds no error in check_send.py (its expected errors are ignored)."""
        stdout, stderr, status = api.run(
            [
                "--config-file",
                str(ROOT / "pyproject.toml"),
                "--cache-dir",
                str(ROOT / ".mypy_cache"),
                str(ROOT / "tests" / "typing" / "check_send.py"),
            ]
        )
        assert status == 0, stdout + stderr

    async def test_check_send_runs(self) -> None:
        """The checked code also runs: send returns the handler's results."""
        async with Mediator(check_send.registry()) as mediator:
            payment, count, counts = await check_send.check_send(mediator)
        assert payment == check_send.PaymentResult(payment_id="pay-456", approved=True)
        assert count == 2
        assert counts == [1, 0]
