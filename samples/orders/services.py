"""Stand-ins for the outside world the handlers talk to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal


class PaymentGateway:
    """A fake card processor that counts every real charge."""

    def __init__(self) -> None:
        self.charges: list[tuple[str, Decimal]] = []

    async def charge(self, payment_id: str, amount: Decimal) -> int:
        self.charges.append((payment_id, amount))
        return len(self.charges)


class Mailer:
    """A flaky mail server: the first attempt of each mail fails."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.sent: list[str] = []

    async def send(self, to: str, subject: str) -> None:
        self.attempts[subject] = self.attempts.get(subject, 0) + 1
        if self.attempts[subject] == 1:
            raise ConnectionError("mail server busy")
        self.sent.append(subject)


class Inventory:
    """Stock reservations."""

    def __init__(self) -> None:
        self.reserved: list[str] = []


class Analytics:
    """Where page views end up."""

    def __init__(self) -> None:
        self.views: list[str] = []


async def unit_of_work() -> AsyncIterator[list[str]]:
    """A per-message resource: opened before the handler, closed after it."""
    journal: list[str] = ["begin"]
    yield journal
    journal.append("commit")
