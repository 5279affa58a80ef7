"""The secrets a run made (PIDs, receipts, tokens, txids) in every spelling a log line or a body might
carry them, and a case-blind search for them: the privacy tests of any folder share it."""

from __future__ import annotations

from dataclasses import dataclass, field

from anonticket.domain.ids import Receipt


def spellings(hex_text: str, slices: bool = False) -> set[str]:
    """Every form of one secret a log line might carry, lowercased for a case-blind search."""
    raw = bytes.fromhex(hex_text)
    forms = {hex_text.lower(), repr(raw)[2:-1].lower()}
    if slices:  # a token or txid shortened for a log is still a leak
        forms |= {hex_text[:16].lower(), hex_text[-16:].lower()}
    return forms


@dataclass
class Secrets:
    items: dict[str, set[str]] = field(default_factory=dict)

    def add_pid(self, name: str, pid16: str) -> None:
        # the wallet's own 32-byte form too: 16 hex followed by 48 zeros
        self.items[name] = spellings(pid16) | spellings(pid16 + "0" * 48)

    def add(self, name: str, hex_text: str) -> None:
        self.items[name] = spellings(hex_text, slices=True)

    def add_receipt(self, name: str, receipt: Receipt) -> None:
        """The receipt in every spelling, the checkout's grouped one included, and its PID."""
        self.items[name] = spellings(receipt.hex(), slices=True) | {
            receipt.grouped().lower(), receipt.grouped().replace("-", " ").lower()}
        self.add_pid(f"{name}'s pid", receipt.pid.hex())

    def found_in(self, text: str) -> list[str]:
        low = text.lower()
        return sorted(name for name, forms in self.items.items() if any(form in low for form in forms))
