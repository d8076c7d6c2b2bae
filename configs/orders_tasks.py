"""The orders example's work: price an order and print its invoice line."""

from __future__ import annotations

from typing import Any


def invoice(data: dict[str, Any]) -> dict[str, Any]:
    total = float(data["total"])
    tax = round(total * 0.2, 2)
    line = {"total": total, "tax": tax, "due": round(total + tax, 2)}
    print(f"invoice: {line['due']:.2f} due ({data.get('items', 1)} items)", flush=True)
    return line
