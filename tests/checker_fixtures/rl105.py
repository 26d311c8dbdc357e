"""RL105: ThreadCancelled swallowed in a worker thread."""

import contextlib

from ragline import CancelToken, ThreadCancelled


def swallows(token: CancelToken) -> None:
    try:
        token.raise_if_cancelled()
    except ThreadCancelled:  # expect: RL105
        return


def suppresses(token: CancelToken) -> None:
    with contextlib.suppress(ThreadCancelled):  # expect: RL105
        token.raise_if_cancelled()


def cleans_up_and_reraises(token: CancelToken) -> None:
    try:
        token.raise_if_cancelled()
    except ThreadCancelled:
        print("stopping")
        raise
