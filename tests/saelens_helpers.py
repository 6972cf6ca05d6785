"""What SAELens's evals need from an ActivationsStore, over tokens we already hold."""

import torch


class TokenBatches:
    """The one ActivationsStore method sae_lens.evals calls: the next n windows of `tokens`."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens, self.next = tokens, 0

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        self.next += n
        return self.tokens[self.next - n : self.next]
