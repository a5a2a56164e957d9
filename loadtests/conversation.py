"""Multi-turn chat for the load generator: each user holds a conversation whose every turn sends the whole history
-- its system prompt, the earlier questions and the answers the server actually gave -- plus a new question, as a
chat client does. After `turns` turns, or when the next turn would not fit `budget_tokens`, the user starts a new
conversation (a failed turn also ends it: the history would lack its answer).

Token counts are estimated as UTF-8 bytes plus MESSAGE_OVERHEAD_TOKENS per message: exact for the bundled server's
byte tokenizer (its chat template adds under 16 bytes a message), an over-estimate for any BPE tokenizer, so a
conversation ends before the server would refuse it for its context length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MESSAGE_OVERHEAD_TOKENS = 16
"""Template tokens a chat message costs at most besides its text (role tags, separators)."""


def estimated_tokens(text: str) -> int:
    return len(text.encode("utf-8")) + MESSAGE_OVERHEAD_TOKENS


@dataclass
class Conversation:
    turns: int
    """Turns per conversation; 1 is single-turn (no history is kept)."""
    budget_tokens: int = 0
    """Most prompt + answer tokens a turn may need (the server's context); 0: no limit but `turns`."""
    system: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The earlier turns' user and assistant messages, in order."""
    turn: int = 0
    """Turns completed in this conversation."""

    def start_turn(self, system: str, question: str, max_tokens: int) -> tuple[str, list[dict[str, Any]], int]:
        """(system prompt, history, 1-based turn number) for the next request: a new conversation when the last
        one is complete or this turn would not fit the budget."""
        if self.turn and (self.turn >= self.turns or not self._fits(question, max_tokens)):
            self.reset()
        if self.turn == 0:
            self.system = system
        return self.system, list(self.history), self.turn + 1

    def _fits(self, question: str, max_tokens: int) -> bool:
        if self.budget_tokens <= 0:
            return True
        needed = sum(estimated_tokens(message["content"]) for message in self.history) + estimated_tokens(question) \
            + (estimated_tokens(self.system) if self.system else 0) + MESSAGE_OVERHEAD_TOKENS + max_tokens
        return needed <= self.budget_tokens

    def answered(self, question: str, answer: str) -> None:
        """The turn succeeded: its question and the server's answer join the history."""
        self.turn += 1
        if self.turns > 1:
            self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    def reset(self) -> None:
        self.history, self.turn, self.system = [], 0, ""
