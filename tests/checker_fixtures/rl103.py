"""RL103: detach() without a timeout."""

from ragline import Lifetime


def start(lifetime: Lifetime) -> tuple[Lifetime, Lifetime]:
    unbounded = lifetime.detach("turn")  # expect: RL103
    bounded = lifetime.detach("turn", timeout=300)
    return unbounded, bounded


def unrelated(context: object, token: object) -> None:
    context.detach(token)  # type: ignore[attr-defined]  # an OpenTelemetry-style detach
