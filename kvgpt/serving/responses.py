"""What `kvgpt serve` sends back: the text a client may see (cut before a stop string) and OpenAI's JSON chunks.

Introduced in notebooks/15_serving.ipynb.
"""

from __future__ import annotations

from ..tokenizer import TextStream
from .api import CompletionRequest


class CompletionText:
    """Token ids -> the text a client may see: decoded as they come, cut before the first stop string.

    A tail that could still become a stop string is held back until it cannot (so a client never sees the
    beginning of a stop string). Introduced in notebooks/15_serving.ipynb.
    """

    def __init__(self, tokenizer, stop: list[str]):
        self._stream, self.stop = TextStream(tokenizer), stop
        self.text, self.sent, self.stopped = "", 0, None  # stopped: the stop string that ended the text

    def push(self, token: int, last: bool = False) -> str:
        """The next token -> the text released now ("" while held back). last: release everything.

        After a stop string, nothing more: the text has ended (later tokens are ignored)."""
        if self.stopped is not None:
            return ""
        self.text += self._stream.push(token) + (self._stream.finish() if last else "")
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, self.sent)) >= 0]
        if hits:
            cut, self.stopped = min(hits)
            self.text, last = self.text[:cut], True
        end = len(self.text) if last else len(self.text) - self._held()
        delta, self.sent = self.text[self.sent : end], end
        return delta

    def _held(self) -> int:
        """Length of the longest unsent tail that is the beginning of a stop string."""
        tail = self.text[self.sent :]
        return max((k for s in self.stop for k in range(1, min(len(s), len(tail) + 1)) if tail.endswith(s[:k])),
                   default=0)


def completion_chunk(req: CompletionRequest, text: str, finish_reason: str | None, stop_reason=None) -> dict:
    """One streamed chunk: one token's text (OpenAI's text_completion object, as vLLM streams it)."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": stop_reason}
    return {"id": req.id, "object": "text_completion", "created": req.created, "model": req.model,
            "choices": [choice], "usage": None}


def usage(req: CompletionRequest, completion_tokens: int) -> dict:
    return {"prompt_tokens": len(req.prompt), "completion_tokens": completion_tokens,
            "total_tokens": len(req.prompt) + completion_tokens}
