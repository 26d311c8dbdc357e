"""RL102: a new root lifetime in code that was handed a lifetime or a request."""

from starlette.requests import Request

from ragline import Lifetime


async def handler(request: Request) -> None:
    with Lifetime.root("mine"):  # expect: RL102
        pass


async def stage(lifetime: Lifetime) -> None:
    background = Lifetime("background")  # expect: RL102
    del background


async def right(lifetime: Lifetime) -> None:
    with lifetime.child("step", timeout=2):
        pass


def main() -> None:
    with Lifetime.root("cli"):  # a program's own root: where roots belong
        pass
