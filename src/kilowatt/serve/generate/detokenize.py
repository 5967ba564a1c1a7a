"""Token ids to text as an answer grows, decoding a few recent tokens per step.

Decoding a whole answer at every new token costs time in its length, for every sequence
of every step. ``IncrementalDetokenizer`` keeps the text of the tokens whose characters
are complete and decodes only a small window at the end (the offsets technique of vLLM
and Hugging Face TGI):

- ``read_offset``: tokens before it are text that no later token changes;
- ``prefix_offset``: the start of the window, the tokens of the previous advance.

Each new token decodes ``ids[prefix_offset:]`` and keeps what follows the window's own
earlier text, ``decode(ids[prefix_offset:read_offset])``. Decoding from a token before
the new ones matters: a SentencePiece decoder drops the leading space of the first token
it sees, and WordPiece glues ``##`` pieces to the token before. The offsets advance only
when the new text does not end in U+FFFD: a character split over several byte-level
tokens is not complete yet, and its bytes must be decoded together.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IncrementalDetokenizer"]

_INCOMPLETE = "\ufffd"  # what a decoder makes of the first bytes of a split character


class IncrementalDetokenizer:
    """The text of a growing list of token ids.

    After each ``append``, ``text`` equals ``tokenizer.decode(ids)`` for tokenizers whose
    decoding of a list joins the decodings of its parts at character boundaries: raw
    UTF-8 bytes, byte-level BPE (GPT-2), SentencePiece metaspace, WordPiece. Byte-fallback
    tokenizers (Llama's ``<0xE2>`` tokens) decode a run of byte tokens as one piece and
    turn all of it into U+FFFD while its last character is incomplete; here the complete
    characters before it stay, which is also what the decoded whole answer says once the
    character completes.

    Example:
        >>> from kilowatt.serve.generate.tinygpt import ByteTokenizer
        >>> text = IncrementalDetokenizer(ByteTokenizer())
        >>> [text.append(b) for b in "é!".encode()]
        ['\\ufffd', 'é', 'é!']
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text = ""  # decode(ids[prefix_offset:read_offset])
        self._complete = ""  # the text of ids[:read_offset]; later tokens never change it
        self.text = ""

    def append(self, token: int) -> str:
        """Add one token id; returns the text of all ids so far."""
        self._ids.append(token)
        window = self._tokenizer.decode(self._ids[self._prefix_offset :])
        new = window[len(self._prefix_text) :]
        if new and not new.endswith(_INCOMPLETE):
            self._complete += new
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            self._prefix_text = self._tokenizer.decode(self._ids[self._prefix_offset :])
            self.text = self._complete
        else:
            self.text = self._complete + new
        return self.text
