"""What a customer is asked to pay: a receipt's PID, its integrated address, the amount, URI and QR. No I/O.

The checkout page shows these to a customer whose browser may run no script and draw
no SVG (Tor Browser at "Safest"), so the QR code is a PNG in a ``data:`` URI. Every
field here reveals the PID (the integrated address carries it in clear), so a
``PaymentRequest`` prints as ``<redacted>`` like the PID itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import segno

from anonticket.domain.address import make_integrated_address
from anonticket.domain.ids import PaymentId, Receipt
from anonticket.domain.payment_uri import format_xmr, payment_uri

# 5 pixels a module: a version-8 code (an address and an amount) is 57 modules with its
# quiet zone, 285 px, which fits a 360 px wide phone and reads from a screen
QR_SCALE = 5
# ISO 18004 asks for a quiet zone of 4 modules; scanners fail more often with less
QR_BORDER = 4


@dataclass(frozen=True, slots=True, repr=False)
class QrImage:
    data_uri: str  # data:image/png;base64,…
    pixels: int  # width = height, quiet zone included

    def __repr__(self) -> str:
        return f"QrImage(<redacted>, {self.pixels}px)"


def make_qr(text: str) -> QrImage:
    """The QR code of ``text`` as a PNG ``data:`` URI: byte mode (the text as it is, never
    upper-cased into alphanumeric mode), error correction exactly M (segno would otherwise
    raise it when the version has room), never a Micro QR (few phone scanners read them),
    black on white whatever the page's colours. About 10 ms of pure Python; not cached,
    since it holds the PID."""
    code = segno.make(text, error="m", mode="byte", micro=False, boost_error=False)
    return QrImage(code.png_data_uri(scale=QR_SCALE, border=QR_BORDER),
                   code.symbol_size(scale=QR_SCALE, border=QR_BORDER)[0])


@dataclass(frozen=True, slots=True, repr=False)
class PaymentRequest:
    pid: PaymentId
    # the integrated address of ``pid``, or (a subaddress checkout) the subaddress
    # allocated for it, which carries no PID: the monitor maps its index to the PID
    integrated_address: str
    piconero: int | None  # None: any amount (the operator has no minimum)

    @property
    def amount_xmr(self) -> str | None:
        return None if self.piconero is None else format_xmr(self.piconero)

    @property
    def uri(self) -> str:
        """``monero:<integrated address>[?tx_amount=…]``: the PID only inside the address,
        since reference wallets refuse ``tx_payment_id`` together with an integrated one."""
        return payment_uri(self.integrated_address, self.piconero)

    def qr(self) -> QrImage:
        return make_qr(self.uri)

    def __repr__(self) -> str:
        return "PaymentRequest(<redacted>)"

    __str__ = __repr__


def payment_request(merchant_address: str, pid: PaymentId, piconero: int | None) -> PaymentRequest:
    """The request for a known PID (a status page asking for the rest of an underpayment)."""
    return PaymentRequest(pid, make_integrated_address(merchant_address, pid.hex()), piconero)


def new_payment_request(merchant_address: str, piconero: int | None
                        ) -> tuple[Receipt, PaymentRequest]:
    """A fresh receipt (``secrets``, through ``Receipt.generate``) and what to pay with it:
    the integrated address of the PID derived from it. Nothing is stored: the service first
    hears of the PID from the wallet, and never of the receipt until the customer claims."""
    receipt = Receipt.generate()
    return receipt, payment_request(merchant_address, receipt.pid, piconero)
